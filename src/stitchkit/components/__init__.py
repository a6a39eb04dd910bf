"""The core's own plugin: the builtin registration (adapters, the ``sequential`` path set, the
``random`` initializer, the samplers). It imports :mod:`stitchkit.core` and :mod:`stitchkit.pool`;
its ``builtin`` module is the one place outside :mod:`stitchkit.families` that imports a family.
"""
