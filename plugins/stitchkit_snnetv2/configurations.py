"""SN-Netv2's two-way stitching configurations between a small and a large anchor.

The official ``get_stitch_configs_bidirection`` (ziplab/SN-Netv2,
``classification/snnet.py``) pairs the small anchor's block boundary ``q``
(after its first ``q`` blocks) with the large anchor's boundary ``p = q * r``
(``r = depth_large // depth_small``) and routes through them four ways:

- ``sl`` small -> large: small ``[0, q)``, stitch, large ``[p, L)``, for ``q = 1..l``;
- ``ls`` large -> small: large ``[0, p)``, stitch, small ``[q, l)``, for ``q = 1..l-1``;
- ``lsl`` large -> small -> large: ``ls`` at ``q_a`` then ``sl`` at ``q_b > q_a``;
- ``sls`` small -> large -> small: ``sl`` at ``q_a`` then ``ls`` at ``q_b > q_a``.

Stitch layer ``q - 1`` of each direction serves every use of boundary ``q``.
The official code keeps ``sl`` at ``q = l`` in its list but leaves it out of
the configurations it trains and evaluates (``front != 11``): it is the whole
small anchor, a stitch layer and only the large anchor's norm and head. The
official test is hard-coded for 12-block small anchors; stitchkit leaves out
``q = l`` for any depth (``head_only=True`` keeps it), so for 12 blocks both
give ``2 + 11 + 11 + 55 + 55 = 134`` configurations on ``11 + 11`` layers.

The official rule is written for ``L == l`` or ``L == 2 l`` (its large -> small
loop takes odd blocks); for other depths stitchkit pairs ``q`` with
``p = floor(q * L / l)``, which is the same rule wherever the official one is
defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stitchkit.core.errors import ConfigError
from stitchkit.core.spec import Path, RowShape, Segment, StitchSpec, stitch_name
from stitchkit_snnet.configurations import check_anchors

#: Route kinds in the official order.
ROUTES = ("sl", "ls", "lsl", "sls")
SMALL, LARGE = 0, 1


@dataclass(frozen=True)
class Route:
    """One two-way configuration: ``kind`` and the small-anchor boundaries it stitches at."""

    kind: str
    boundaries: tuple[int, ...]


def check_two_anchors(rows: Sequence[RowShape]) -> None:
    """Exactly two anchors, the smaller first (width and depth not decreasing)."""
    if len(rows) != 2:
        raise ConfigError(
            f"SN-Netv2 stitches exactly two anchors (small, large), got {len(rows)}: "
            f"{', '.join(str(r) for r in rows) or 'none'}; for three or more use method 'snnet'"
        )
    check_anchors(rows)


def boundary(q: int, rows: Sequence[RowShape]) -> int:
    """The large anchor's boundary paired with the small anchor's boundary ``q``."""
    return q * rows[LARGE].depth // rows[SMALL].depth


def routes(rows: Sequence[RowShape], kinds: Sequence[str] = ROUTES, *, head_only: bool = False) -> list[Route]:
    """The stitched configurations of ``kinds``, in the official order (anchors excluded)."""
    check_two_anchors(rows)
    unknown = sorted(set(kinds) - set(ROUTES))
    if unknown:
        raise ConfigError(f"SN-Netv2 routes must be among {', '.join(ROUTES)}, got {', '.join(unknown)}")
    n = rows[SMALL].depth
    sl = list(range(1, n + 1 if head_only else n))
    ls = list(range(1, n))
    out: list[Route] = []
    if "sl" in kinds:
        out += [Route("sl", (q,)) for q in sl]
    if "ls" in kinds:
        out += [Route("ls", (q,)) for q in ls]
    if "lsl" in kinds:  # for each ls, each sl stitching back later (never the head-only sl)
        out += [Route("lsl", (a, b)) for a in ls for b in range(1, n) if b > a]
    if "sls" in kinds:  # for each sl, each ls stitching back later
        out += [Route("sls", (a, b)) for a in sl for b in ls if b > a]
    return out


def stitch_of(direction: str, q: int) -> str:
    """The stitch layer of boundary ``q`` for ``"sl"`` (small -> large) or ``"ls"``."""
    return stitch_name(SMALL, LARGE, q - 1) if direction == "sl" else stitch_name(LARGE, SMALL, q - 1)


def route_path(route: Route, rows: Sequence[RowShape]) -> Path:
    """The stitchkit path of a route: segments are half-open block ranges."""
    l_small, l_large = rows[SMALL].depth, rows[LARGE].depth
    kind, qs = route.kind, route.boundaries
    ends = {SMALL: l_small, LARGE: l_large}
    # the anchors visited and, per stitch, (direction, boundary)
    visits = [SMALL if kind[0] == "s" else LARGE]
    cuts: list[tuple[str, int]] = []
    for q, step in zip(qs, (kind[i : i + 2] for i in range(len(kind) - 1))):
        cuts.append((step, q))
        visits.append(LARGE if step == "sl" else SMALL)
    segments, stitches, start = [], [], 0
    for i, row in enumerate(visits):
        if i < len(cuts):
            step, q = cuts[i]
            stop = q if row == SMALL else boundary(q, rows)
        else:
            stop = ends[row]
        segments.append(Segment(row, start, stop))
        if i < len(cuts):
            step, q = cuts[i]
            stitches.append(stitch_of(step, q))
            start = boundary(q, rows) if step == "sl" else q
    label = f"{kind} " + ",".join(str(q) for q in qs)
    return Path(tuple(segments), tuple(stitches), label=label)


def snnetv2_stitches(rows: Sequence[RowShape], kinds: Sequence[str] = ROUTES, *, head_only: bool = False) -> list[StitchSpec]:
    """The stitch layers the configurations use: ``s0_1_<q-1>`` (small -> large), ``s1_0_<q-1>``."""
    check_two_anchors(rows)
    used: dict[str, StitchSpec] = {}
    for route in routes(rows, kinds, head_only=head_only):
        path = route_path(route, rows)
        for name, front, end in zip(path.stitches, path.segments, path.segments[1:]):
            # the widths where the layer stands: leaving the front row's segment, entering the end row's
            # (a hierarchical row's stage width there)
            used.setdefault(name, StitchSpec(name, front.row, end.row, rows[front.row].width_at(front.stop),
                                             rows[end.row].width_at(end.start)))
    order = sorted(used, key=lambda n: (used[n].src, int(n.rsplit("_", 1)[1])))
    return [used[n] for n in order]


def snnetv2_paths(rows: Sequence[RowShape], kinds: Sequence[str] = ROUTES, *, head_only: bool = False) -> list[Path]:
    """The two anchors (``anchor 0``, ``anchor 1``), then every route in the official order."""
    check_two_anchors(rows)
    anchors = [Path((Segment(a, 0, r.depth),), (), label=f"anchor {a}") for a, r in enumerate(rows)]
    return anchors + [route_path(r, rows) for r in routes(rows, kinds, head_only=head_only)]
