"""Which ancestry block is compared with which auxiliary block during distillation.

The paper splits both networks into levels (low / middle / high for dense
distillation) and compares the *last* block of each level. Level ``i`` of
``n`` ends at block ``round(i * depth / n)`` (1-based, rounding half up), so
a 12-block ancestry and a 6-block auxiliary pair blocks 4, 8, 12 with 2, 4,
6, and a 9-block auxiliary with 3, 6, 9. One level is last-block-only
distillation.
"""

from __future__ import annotations

import math

from stitchkit.core.errors import ConfigError
from stitchkit.core.spec import RowShape

#: Names accepted wherever a number of levels is expected.
LEVEL_NAMES = {"last": 1, "dense": 3}


def level_ends(depth: int, levels: int) -> list[int]:
    """1-based index of the last block of each of ``levels`` equal levels of a ``depth``-block network."""
    if levels < 1:
        raise ConfigError(f"distillation needs at least one level, got {levels}")
    if depth < levels:
        raise ConfigError(
            f"cannot split {depth} blocks into {levels} distillation levels; "
            f"use at most {depth} levels (e.g. levels = \"last\")"
        )
    return [math.floor(i * depth / levels + 0.5) for i in range(1, levels + 1)]


def level_pairs(ancestry_depth: int, auxiliary_depth: int, levels: int | str) -> list[tuple[int, int]]:
    """``(ancestry block, auxiliary block)`` pairs, 0-based, one per level, low to high."""
    n = resolve_levels(levels)
    teacher = level_ends(ancestry_depth, n)
    student = level_ends(auxiliary_depth, n)
    return [(t - 1, s - 1) for t, s in zip(teacher, student)]


def resolve_levels(levels: int | str) -> int:
    """``"last"`` -> 1, ``"dense"`` -> 3, a positive int (or its text) -> itself."""
    if isinstance(levels, str):
        if levels in LEVEL_NAMES:
            return LEVEL_NAMES[levels]
        if levels.isdigit():
            return int(levels)
        raise ConfigError(
            f"unknown distillation levels {levels!r}; use 'last', 'dense' or a positive number"
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"distillation levels must be 'last', 'dense' or a positive number, got {levels!r}")
    return levels


def default_levels(ancestry: RowShape, auxiliary: RowShape) -> int:
    """The paper's ablation: dense (3 levels) for a width-reduced auxiliary, last block for a same-width one.

    An auxiliary of fewer than three blocks gets one level per block. Hierarchical families
    (stages) narrower than the ancestry get one level per stage, at each stage's last block.
    """
    if ancestry.width == auxiliary.width:
        return 1
    if ancestry.stages and len(auxiliary.stage_shapes) == len(ancestry.stage_shapes):
        return len(ancestry.stage_shapes)
    return min(LEVEL_NAMES["dense"], auxiliary.depth, ancestry.depth)
