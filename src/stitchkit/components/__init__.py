"""The core's own plugin: the builtin registration (adapters, the ``sequential`` path set, the
``random`` initializer, the samplers). It imports :mod:`stitchkit.core`, :mod:`stitchkit.pool` and
:mod:`stitchkit.io`; its ``builtin`` module is the one place outside :mod:`stitchkit.families` that
imports a family, and the registry loads it by module name, as it loads an entry point.
"""
