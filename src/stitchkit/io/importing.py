"""Pools from checkpoints written by a method's original code (``stitchkit import``).

The core knows no checkpoint format: it asks the registered method, whose
:meth:`~stitchkit.core.interfaces.Method.import_checkpoint` reads its own.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from ..core.errors import ConfigError
from ..core.registry import default_registry
from ..pool.pool import Pool


def import_checkpoint(method: str, checkpoint: str | pathlib.Path, *, anchors: Sequence[str], registry: Any = None, **options: Any) -> Pool:
    """The pool ``method`` builds from ``checkpoint``; ``options`` go to the method's constructor."""
    registry = registry if registry is not None else default_registry()
    cls = registry.get("method", method)
    try:
        instance = cls(**options)
    except TypeError as exc:
        raise ConfigError(f"method {method!r} does not take the options {sorted(options)}: {exc}") from None
    pool = instance.import_checkpoint(pathlib.Path(checkpoint), anchors=list(anchors), registry=registry)
    if not isinstance(pool, Pool):
        raise ConfigError(f"method {method!r} returned {type(pool).__name__} from import_checkpoint, not a Pool")
    return pool


def import_snnet(
    checkpoint: str | pathlib.Path, anchors: Sequence[str], *, kernel_size: int = 2, stride: int = 1, registry: Any = None
) -> Pool:
    """A pool from an official SN-Net checkpoint (ziplab/SN-Net ``stitching_deit``); see docs/snnet.md.

    Its descendants compute the official forward (stitched ones skip the end
    anchor's final norm). Needs the ``snnet`` plugin, found by entry point.
    """
    return import_checkpoint("snnet", checkpoint, anchors=anchors, registry=registry, kernel_size=kernel_size, stride=stride)
