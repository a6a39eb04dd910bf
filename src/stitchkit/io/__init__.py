"""Bytes on disk: safe file handling (atomic writes, locks, special files), the pool file's header
and storage, inference preprocessing, ONNX export and checkpoint import. It imports
:mod:`stitchkit.core` and :mod:`stitchkit.pool` only, and reaches a family through the registry;
it sits below the families because their starting weights are files read with its checks.
"""
