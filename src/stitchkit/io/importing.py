"""Pools from checkpoints written by a method's original code (``stitchkit import``).

The core knows no checkpoint format: it asks the registered method, whose
:meth:`~stitchkit.core.interfaces.Method.import_checkpoint` reads its own.
Whatever the method, the result is held to what ``export`` holds a pool to
before anything is written: the output is not the checkpoint (nor a link to
it), and every parameter is a float tensor with finite values.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import ConfigError, PoolFormatError
from ..core.registry import default_registry
from ..pool.pool import Pool
from .files import refuse_overwrite
from .storage import save_pool


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
    check_weights(pool, checkpoint)
    return pool


def check_weights(pool: Pool, checkpoint: str | pathlib.Path) -> None:
    """Every parameter of ``pool`` is a float tensor of finite values, or a PoolFormatError naming its key.

    The method names the checkpoint's own keys when it checks them (``snnet`` does);
    this catches what any method let through, by the key it has in the pool.
    """
    params = {name for name, _ in pool.named_parameters()}
    for name, tensor in pool.state_dict().items():
        if name in params and not tensor.is_floating_point():
            raise PoolFormatError(checkpoint, f"imports {name} as a {str(tensor.dtype).removeprefix('torch.')} tensor; "
                                              "weights must be float tensors")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise PoolFormatError(checkpoint, f"imports {name} with {bad} non-finite value(s) (NaN or Inf); "
                                              "import a checkpoint saved before training diverged")


def import_to_file(
    method: str, checkpoint: str | pathlib.Path, output: str | pathlib.Path, *, anchors: Sequence[str], registry: Any = None,
    **options: Any,
) -> tuple[Pool, pathlib.Path]:
    """Import ``checkpoint`` and save the pool to ``output`` (``stitchkit import``); nothing is written on any error.

    ``output`` may not be the checkpoint or a link to it (as ``export`` refuses to overwrite its pool).
    """
    refuse_overwrite(output, [checkpoint], "-o output")
    pool = import_checkpoint(method, checkpoint, anchors=anchors, registry=registry, **options)
    path = save_pool(pool, output, provenance={"method": method, "imported_from": str(checkpoint)})
    return pool, pathlib.Path(path)


def import_snnet(
    checkpoint: str | pathlib.Path, anchors: Sequence[str], *, kernel_size: int = 2, stride: int = 1, registry: Any = None
) -> Pool:
    """A pool from an official SN-Net checkpoint (ziplab/SN-Net ``stitching_deit``); see docs/snnet.md.

    Its descendants compute the official forward (stitched ones skip the end
    anchor's final norm). Needs the ``snnet`` plugin, found by entry point.
    """
    return import_checkpoint("snnet", checkpoint, anchors=anchors, registry=registry, kernel_size=kernel_size, stride=stride)
