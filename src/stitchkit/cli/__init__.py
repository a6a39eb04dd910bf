"""The ``stitchkit`` command line."""
