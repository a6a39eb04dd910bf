"""Where a learngene pool keeps the learned transformation matrices.

Naming convention of ``pool.extras`` (tensors, stored in the pool file):

- ``learngene.row<r>.W.<i>`` -- block-based matrix ``W`` (``d x d_r``) learned
  while distilling row ``r``, level ``i`` (0 = lowest);
- ``learngene.row<r>.M.<i>`` -- attention-based matrix ``M`` of the same level.

A row as wide as the ancestry has none (its ``W`` and ``M`` are the
identity). ``pool.info["learngene"]`` records the ancestry's shape and, per
row, the ``(ancestry block, auxiliary block)`` pairs of each level.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from stitchkit.core.errors import ConfigError

_KEY = re.compile(r"^learngene\.row(\d+)\.(W|M)\.(\d+)$")


def matrix_key(row: int, kind: str, level: int) -> str:
    if kind not in ("W", "M"):
        raise ValueError(f"matrix kind must be 'W' or 'M', got {kind!r}")
    return f"learngene.row{row}.{kind}.{level}"


def store_matrices(extras: dict[str, torch.Tensor], row: int, kind: str, matrices: Sequence[torch.Tensor]) -> None:
    """Put one row's per-level matrices into ``extras`` (detached CPU copies), replacing old ones."""
    for key in [k for k in extras if (m := _KEY.match(k)) and int(m.group(1)) == row and m.group(2) == kind]:
        del extras[key]
    for level, w in enumerate(matrices):
        extras[matrix_key(row, kind, level)] = w.detach().to("cpu", torch.float32).clone().contiguous()


def row_matrices(extras: dict[str, torch.Tensor], row: int, kind: str = "W") -> list[torch.Tensor]:
    """One row's per-level matrices, level order."""
    found = {}
    for key, value in extras.items():
        m = _KEY.match(key)
        if m and int(m.group(1)) == row and m.group(2) == kind:
            found[int(m.group(3))] = value
    return [found[i] for i in sorted(found)]


def ancestry_width(info: dict[str, Any]) -> int | None:
    meta = info.get("learngene", {})
    anc = meta.get("ancestry") if isinstance(meta, dict) else None
    return int(anc["width"]) if isinstance(anc, dict) and "width" in anc else None


def _same_stage_widths(info: dict[str, Any], shape: Any) -> bool:
    """A row as wide as the ancestry in every stage (plain ViTs: one stage) has identity transforms."""
    anc = info.get("learngene", {}).get("ancestry", {})
    stages = anc.get("stages") if isinstance(anc, dict) else None
    if not stages:
        return not shape.stages
    return [int(w) for _, w, _ in stages] == [w for _, w, _ in shape.stage_shapes]


def averaged_transform(pool, row: int, width: int | None = None) -> torch.Tensor | None:  # noqa: ANN001
    """The row's ``W`` averaged over its levels (``d x d_r``), or ``None`` for the identity.

    ``width``: the row's channels at the stitched boundary (default: its
    width); in a hierarchical family only the levels distilled at that width
    are averaged (TM exists where matrices were learned). Raises
    :class:`ConfigError` when the pool has no matrices for a row that is
    narrower than the ancestry (it was not distilled by learngene-pool).
    """
    ws = row_matrices(pool.extras, row, "W")
    if width is not None and pool.shapes[row].stages:
        at = [w for w in ws if w.shape[1] == width]
        if ws and not at:
            raise ConfigError(
                f"the tm initializer needs a block-based transformation matrix of row {row} at width {width}, but "
                f"its levels were distilled at widths {sorted({int(w.shape[1]) for w in ws})}; use 'ls' for this pool"
            )
        ws = at
    width = width if width is not None else pool.shapes[row].width
    if not ws:
        anc = ancestry_width(pool.info)
        if anc is not None and anc == pool.shapes[row].width and _same_stage_widths(pool.info, pool.shapes[row]):
            return None
        raise ConfigError(
            f"the tm initializer needs the block-based transformation matrices of row {row} "
            f"(pool.extras 'learngene.row{row}.W.<level>'), which this pool lacks; it was not distilled by "
            f"learngene-pool with block distillation. Use the 'ls' or 'random' initializer instead"
        )
    shapes = {tuple(w.shape) for w in ws}
    if len(shapes) != 1 or next(iter(shapes))[1] != width:
        raise ConfigError(
            f"pool.extras 'learngene.row{row}.W.*' have shapes {sorted(shapes)}, expected (d, {width}) for row {row}"
        )
    return torch.stack([w.float() for w in ws]).mean(0)
