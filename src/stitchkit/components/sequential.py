"""The core's path set: "k narrow blocks, then l - k wide blocks".

Rows must have equal depth ``l``. Between rows ``r`` and ``r + 1`` there is
one stitch layer per position ``k = 1 .. l-1`` (``s<r>_<r+1>_<k>``), mapping
the output of block ``k`` (1-based) of the narrow row to the input of block
``k + 1`` of the wide row. A path climbs through consecutive rows, each
running a non-empty run of blocks; with two rows this gives the ``l + 1``
descendants of the Learngene Pool paper (``k = l`` is the narrow row alone,
``k = 0`` the wide one). Paths are ordered from small to large. For
hierarchical rows (blocks numbered across stages) the stitch at ``k`` joins
the two rows' widths at that boundary (:meth:`~stitchkit.core.spec.RowShape.width_at`);
rows need equal depths per stage, so both sides have the same grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from typing_extensions import override

from ..core.errors import ConfigError
from ..core.interfaces import Method
from ..core.spec import Path, RowShape, Segment, StitchSpec, stitch_name


def sequential_stitches(rows: Sequence[RowShape]) -> list[StitchSpec]:
    depths = {r.depth for r in rows}
    if len(depths) != 1:
        raise ConfigError(
            f"sequential stitching needs rows of equal depth, got depths {[r.depth for r in rows]}"
        )
    (depth,) = depths
    return [
        StitchSpec(stitch_name(r, r + 1, k), r, r + 1, rows[r].width_at(k), rows[r + 1].width_at(k))
        for r in range(len(rows) - 1)
        for k in range(1, depth)
    ]


def sequential_paths(rows: Sequence[RowShape]) -> list[Path]:
    depth = rows[0].depth
    paths = []
    for first in range(len(rows)):
        for last in range(first, len(rows)):
            n_cuts = last - first
            # cut points 0 < c_1 < ... < c_n < depth: every segment runs >= 1 block
            for cuts in itertools.combinations(range(1, depth), n_cuts):
                bounds = (0, *cuts, depth)
                segs = tuple(Segment(first + i, bounds[i], bounds[i + 1]) for i in range(n_cuts + 1))
                stitches = tuple(stitch_name(first + i, first + i + 1, bounds[i + 1]) for i in range(n_cuts))
                paths.append(Path(segs, stitches))

    def size(p: Path) -> tuple:
        return (sum(len(s) * rows[s.row].width ** 2 for s in p.segments), p.name)

    return sorted(paths, key=size)


class SequentialMethod(Method):
    """Sequential stitching (the Learngene Pool paper's descendants), paths only."""

    name = "sequential"

    @override
    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        return sequential_stitches(rows)

    @override
    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        return sequential_paths(rows)
