"""The sizes a pool file stores in its header (params per row and descendant, MACs per image).

:func:`~stitchkit.io.storage.save_pool` writes them so that ``stitchkit info``
reads a few kilobytes with the standard library and never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import Pool

#: How parameters are counted in stored sizes (see :func:`stitchkit.pool.measure.count_params`).
SIZES_CONVENTION = "true"


def pool_sizes(pool: Pool) -> dict[str, Any]:
    """The sizes a pool file stores: parameters per row and in all, params and MACs per descendant."""
    from .measure import count_params  # local: ``stitchkit info`` imports this module and must not import torch

    return {
        "convention": SIZES_CONVENTION,
        "storage_params": pool.storage_params(),
        "rows": [count_params(row) for row in pool.rows],
        "descendants": [{"params": c["params"], "macs": c["macs"]} for c in pool.costs(convention=SIZES_CONVENTION)],
    }
