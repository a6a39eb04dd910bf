"""The official Learngene Pool code's sliding-window paths.

SN-Net's paired stitching, as the official Learngene Pool code uses it: a
window of two block ids slides over ``0 .. l-1``; each window ``m`` adds the
pairs ``(j, k)`` with ``j, k in {m, m+1}`` not seen before, all sharing stitch
layer ``m``. A pair means "the narrow row runs blocks ``0..j``, the stitch
layer, then the wide row runs blocks ``k..l-1``". ``(j, j+1)`` is the
sequential path (``l`` blocks); ``(j, j)`` runs ``l + 1`` blocks (block ``j``
in both rows) and ``(j+1, j)`` runs ``l + 2`` (blocks ``j`` and ``j+1`` in both). Two ``l``-block rows give
``4 + 3 (l - 2)`` stitched pairs (16 for ``l = 6``, 25 for ``l = 9``: with
the two rows alone, the paper's 18 and 27 descendants).

Stitch layer ``m`` maps the narrow row's block ``m+1`` output (1-based) to the
wide row's block ``m+2`` input in the sequential pair, so the stitch layers
are exactly the sequential ones (``s<r>_<r+1>_<m+1>``); only the path set
differs. With more than two rows a path climbs through consecutive rows, and a
middle row runs at least one block (the official code's rule ``j_next >= k``).
With ``skip_rows`` a path may also skip rows (any increasing sequence of rows,
stitch layers ``s<a>_<c>_<m+1>`` for every ``a < c``): the official 3-instance
pool's 18 descendants are tiny, base and the 16 tiny -> base pairs, skipping
its small row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from stitchkit.components.sequential import row_chains
from stitchkit.core.errors import ConfigError
from stitchkit.core.spec import Path, RowShape, Segment, stitch_name


def paired_stitching(depth: int) -> list[tuple[int, int, int]]:
    """``(j, k, m)``: front runs blocks ``0..j``, end runs ``k..depth-1``, stitch layer ``m`` (0-based)."""
    seen: set[tuple[int, int]] = set()
    out = []
    for m in range(depth - 1):
        for j in (m, m + 1):
            for k in (m, m + 1):
                if (j, k) not in seen:
                    seen.add((j, k))
                    out.append((j, k, m))
    return out


def sliding_window_paths(rows: Sequence[RowShape], skip_rows: bool = False) -> list[Path]:
    depths = {r.depth for r in rows}
    if len(depths) != 1:
        raise ConfigError(f"sliding-window stitching needs rows of equal depth, got depths {[r.depth for r in rows]}")
    (depth,) = depths
    if any(r.stages for r in rows):
        raise ConfigError(
            f"sliding-window stitching joins a block to the next row's neighbouring blocks, across stage boundaries "
            f"where widths and grids change; rows {[str(r) for r in rows]} have stages: use paths = \"sequential\""
        )
    pairs = paired_stitching(depth)
    paths = []
    for through in row_chains(len(rows), skip_rows):
        for chain in itertools.product(pairs, repeat=len(through) - 1):
            # a middle row runs blocks k_prev .. j_next; it must run at least one
            if any(chain[i + 1][0] < chain[i][1] for i in range(len(chain) - 1)):
                continue
            starts = [0] + [k for _, k, _ in chain]
            stops = [j + 1 for j, _, _ in chain] + [depth]
            segs = tuple(Segment(through[i], starts[i], stops[i]) for i in range(len(chain) + 1))
            stitches = tuple(stitch_name(through[i], through[i + 1], m + 1) for i, (_, _, m) in enumerate(chain))
            paths.append(Path(segs, stitches))

    def size(p: Path) -> tuple:
        return (sum(len(s) * rows[s.row].width ** 2 for s in p.segments), p.num_blocks, p.name)

    return sorted(paths, key=size)
