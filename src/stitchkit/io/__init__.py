"""Bytes on disk: safe file handling, the pool file's header and storage, inference
preprocessing, ONNX export and checkpoint import. It imports the layers below it
(:mod:`~stitchkit.core`, :mod:`~stitchkit.pool`, :mod:`~stitchkit.components`) and reaches families
only through the registry.
"""
