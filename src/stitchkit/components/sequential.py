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

``skip_rows=True`` also stitches row ``r`` to every wider row ``c > r + 1``
(``s<r>_<c>_<k>``) and lets a path climb through any increasing sequence of
rows, skipping some: the Learngene Pool authors' tiny -> base descendants in a
pool that also holds a small row. Without it only consecutive rows are joined.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from typing_extensions import override

from ..core.errors import ConfigError
from ..core.interfaces import Method
from ..core.spec import Path, RowShape, Segment, StitchSpec, stitch_name


def row_pairs(n_rows: int, skip_rows: bool = False) -> list[tuple[int, int]]:
    """The ``(narrow, wide)`` row pairs that get stitch layers: consecutive ones, or every ``r < c``."""
    if skip_rows:
        return list(itertools.combinations(range(n_rows), 2))
    return [(r, r + 1) for r in range(n_rows - 1)]


def row_chains(n_rows: int, skip_rows: bool = False) -> list[tuple[int, ...]]:
    """The rows a path may run through, narrow to wide: consecutive runs, or any increasing sequence."""
    if skip_rows:
        return [c for n in range(1, n_rows + 1) for c in itertools.combinations(range(n_rows), n)]
    return [tuple(range(first, last + 1)) for first in range(n_rows) for last in range(first, n_rows)]


def sequential_stitches(rows: Sequence[RowShape], skip_rows: bool = False) -> list[StitchSpec]:
    depths = {r.depth for r in rows}
    if len(depths) != 1:
        raise ConfigError(
            f"sequential stitching needs rows of equal depth, got depths {[r.depth for r in rows]}"
        )
    (depth,) = depths
    return [
        StitchSpec(stitch_name(r, c, k), r, c, rows[r].width_at(k), rows[c].width_at(k))
        for r, c in row_pairs(len(rows), skip_rows)
        for k in range(1, depth)
    ]


def sequential_paths(rows: Sequence[RowShape], skip_rows: bool = False) -> list[Path]:
    depth = rows[0].depth
    paths = []
    for chain in row_chains(len(rows), skip_rows):
        n_cuts = len(chain) - 1
        # cut points 0 < c_1 < ... < c_n < depth: every segment runs >= 1 block
        for cuts in itertools.combinations(range(1, depth), n_cuts):
            bounds = (0, *cuts, depth)
            segs = tuple(Segment(chain[i], bounds[i], bounds[i + 1]) for i in range(n_cuts + 1))
            stitches = tuple(stitch_name(chain[i], chain[i + 1], bounds[i + 1]) for i in range(n_cuts))
            paths.append(Path(segs, stitches))

    def size(p: Path) -> tuple:
        return (sum(len(s) * rows[s.row].width ** 2 for s in p.segments), p.name)

    return sorted(paths, key=size)


class SequentialMethod(Method):
    """Sequential stitching (the Learngene Pool paper's descendants), paths only; ``skip_rows``: see the module."""

    name = "sequential"

    def __init__(self, skip_rows: bool = False) -> None:
        self.skip_rows = bool(skip_rows)

    @override
    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        return sequential_stitches(rows, self.skip_rows)

    @override
    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        return sequential_paths(rows, self.skip_rows)
