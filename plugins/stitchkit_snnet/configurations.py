"""SN-Net's stitching configurations, enumerated exactly as the official code does.

A configuration ``(j, k)`` between a front anchor and the next larger (end)
anchor runs the front anchor's blocks ``0..j`` (inclusive), one stitch layer,
then the end anchor's blocks ``k..L-1``; the stitch layer maps the front
output of block ``j`` to the end anchor's *input* of block ``k``. This is what
``SNNet.forward`` and ``initialize_stitching_weights`` in ziplab/SN-Net
(``stitching_deit/snnet.py``, ``utils.py``) do: the end anchor resumes at
``blocks[cfg[1]:]`` and LS targets ``extract_block_features[cfg[1] - 1]``, where
index ``-1`` is the patch-embedding output.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from stitchkit.core.errors import ConfigError
from stitchkit.core.spec import Path, RowShape, Segment, StitchSpec, stitch_name


@dataclass(frozen=True)
class Stitching:
    """How SN-Net enumerates configurations (the official ``SNNet`` arguments).

    ``kernel_size`` and ``stride`` shape the sliding window of paired
    stitching (equal depths); ``nearest = False`` also stitches
    non-neighbouring anchors (Ti->B) and chains of three anchors (Ti->S->B),
    as the official ``nearest_stitching=False``.
    """

    kernel_size: int = 2
    stride: int = 1
    nearest: bool = True

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.stride < 1:
            raise ConfigError(
                f"snnet stitching: kernel_size and stride must be >= 1, got {self.kernel_size} and {self.stride}"
            )

    def to_json(self) -> dict[str, object]:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "nearest": self.nearest}


@dataclass(frozen=True)
class Configuration:
    """One stitched configuration through two or three anchors.

    ``anchors[i]`` runs from where the previous stitch left it (block 0 for
    the first) to block ``cuts[i][0]`` inclusive; stitch layer ``layers[i]``
    of the pair ``(anchors[i], anchors[i + 1])`` follows, and the next anchor
    resumes at block ``cuts[i][1]``. For hierarchical anchors the cut counts
    blocks within ``stage`` (``None`` for plain ViTs).
    """

    anchors: tuple[int, ...]
    cuts: tuple[tuple[int, int], ...]
    layers: tuple[int, ...]
    stage: int | None = None

    @property
    def label(self) -> str:
        stage = "" if self.stage is None else f" stage {self.stage}"
        return "->".join(map(str, self.anchors)) + stage + " " + "".join(f"({j},{k})" for j, k in self.cuts)


def paired_stitching(depth: int, kernel_size: int = 2, stride: int = 1) -> list[tuple[tuple[int, int], int]]:
    """``[((j, k), layer), ...]`` for two anchors of equal ``depth``.

    A window of ``kernel_size`` block ids slides by ``stride``; every ``(j, k)``
    in ``window x window`` not seen before is a configuration on the current
    stitch layer, and the layer id advances only after a window added pairs.
    Depth 12 gives 34 pairs on 11 layers.
    """
    if depth < 1 or kernel_size < 1 or stride < 1:
        raise ConfigError(
            f"paired stitching needs depth, kernel_size and stride >= 1, got {depth}, {kernel_size}, {stride}"
        )
    seen: set[tuple[int, int]] = set()
    out: list[tuple[tuple[int, int], int]] = []
    layer = 0
    for i in range(0, depth, stride):
        ids = range(i, min(i + kernel_size, depth))
        added = False
        for j in ids:
            for k in ids:
                if (j, k) not in seen:
                    seen.add((j, k))
                    out.append(((j, k), layer))
                    added = True
        if added:
            layer += 1
    return out


def nearest_mapping(front_depth: int, end_depth: int) -> list[int]:
    """For each end block, the front block at the same relative depth.

    PyTorch's legacy ``interpolate(mode="nearest")`` rule (``floor(i * f / e)``),
    which the official ``unpaired_stitching`` uses, computed in exact integers.
    """
    return [i * front_depth // end_depth for i in range(end_depth)]


def unpaired_stitching(front_depth: int, end_depth: int) -> list[tuple[tuple[int, int], int]]:
    """``[((j, k), layer), ...]`` for a front anchor shallower than the end anchor.

    As the official ``unpaired_stitching``: end block ``k`` is paired with the
    front block ``j`` it maps to by :func:`nearest_mapping`, whenever ``j < k``;
    configurations are ordered by ``j`` then ``k``. The official
    ``get_stitch_configs`` then zips that list with the end mapping ids to
    assign stitch layers, so configuration number ``n`` uses layer
    ``mapping[n]``; stitchkit follows it (and renumbers the layers densely).
    """
    if front_depth >= end_depth:
        raise ConfigError(
            f"unpaired stitching needs a front anchor shallower than the end anchor, got depths "
            f"{front_depth} -> {end_depth}; the official rule yields no configuration when the front "
            f"anchor is deeper: order anchors so that depth does not decrease"
        )
    mapping = nearest_mapping(front_depth, end_depth)
    pairs = [(j, k) for j in range(front_depth) for k, m in enumerate(mapping) if m == j and j < k]
    layers = mapping[: len(pairs)]
    dense = {old: new for new, old in enumerate(dict.fromkeys(layers))}
    return [(pair, dense[layer]) for pair, layer in zip(pairs, layers)]


def pair_rule(front_depth: int, end_depth: int, stitching: Stitching = Stitching()) -> list[tuple[tuple[int, int], int]]:
    """Paired stitching (with the window's kernel size and stride) for equal depths, else unpaired."""
    if front_depth == end_depth:
        return paired_stitching(front_depth, stitching.kernel_size, stitching.stride)
    return unpaired_stitching(front_depth, end_depth)


def anchor_combinations(n: int, nearest: bool = True) -> list[tuple[int, ...]]:
    """The anchor pairs and chains stitched, in the official order.

    ``nearest``: each anchor to the next one. Otherwise every pair in
    ``itertools.combinations`` order, then every chain of three: the official
    ``get_stitch_configs`` enumerates combinations by size, and its forward
    runs at most two stitches, so longer chains are not offered.
    """
    if nearest:
        return [(a, a + 1) for a in range(n - 1)]
    return list(itertools.combinations(range(n), 2)) + list(itertools.combinations(range(n), 3))


def check_anchors(rows: Sequence[RowShape]) -> None:
    """Anchors must be ordered by size: width and depth never decrease."""
    if not rows:
        raise ConfigError("SN-Net needs at least one anchor")
    for a in range(len(rows) - 1):
        if rows[a + 1].width < rows[a].width or rows[a + 1].depth < rows[a].depth:
            raise ConfigError(
                f"SN-Net anchors must be ordered by size (width and depth not decreasing), but anchor {a} "
                f"is {rows[a]} and anchor {a + 1} is {rows[a + 1]}; list the smallest anchor first"
            )


def forward_paired_stitching(depth: int) -> list[tuple[tuple[int, int], int]]:
    """Paired stitching inside a stage of hierarchical anchors (``stitching_swin/models/snnet.py``,
    ``stitching_resnet_swin/timm/models/snnet.py``): the same window of 2 as :func:`paired_stitching`,
    but only pairs with ``j < k`` (the end anchor resumes *after* the front's last block, never at
    block 0 of the stage). Depth 2 gives one configuration, depth 18 gives 17, one layer each."""
    return [((j, k), layer) for layer, (j, k) in enumerate((i, i + 1) for i in range(depth - 1))]


def stitched_stages(rows: Sequence[RowShape], stages: Sequence[int] | None = None) -> list[int]:
    """The stages hierarchical anchors are stitched in.

    The official code stitches every stage but the last between Swins
    (``stitching_swin``: stages 0, 1, 2) and only the middle stages once a CNN
    is among the anchors (``stitching_resnet_swin``: stages 1, 2, for
    ResNet-18 -> ResNet-50 and ResNet-18 -> Swin-Ti). stitchkit follows it,
    telling a CNN by its rows having no attention heads; ``stages`` overrides.
    """
    n = len(rows[0].stage_shapes)
    if any(len(r.stage_shapes) != n for r in rows):
        raise ConfigError(
            f"hierarchical SN-Net anchors need the same number of stages, got {[str(r) for r in rows]}"
        )
    if stages is None:
        first = 1 if any(h == 0 for r in rows for _, _, h in r.stage_shapes) else 0
        return list(range(first, n - 1))
    bad = [s for s in stages if not 0 <= s < n]
    if bad:
        raise ConfigError(f"snnet stages {bad} do not exist: the anchors have stages 0..{n - 1}")
    return sorted(set(stages))


def configurations(
    rows: Sequence[RowShape], stitching: Stitching = Stitching(), stages: Sequence[int] | None = None
) -> list[Configuration]:
    """Every stitched configuration, per anchor combination in order (anchors alone excluded).

    Plain ViTs (one stage): a chain ``(a, b, c)`` takes every configuration
    ``(j, k)`` of ``a -> b`` and every ``(m, e)`` of ``b -> c`` with ``m >= k``
    (``b`` runs blocks ``k..m``), as the official ``get_stitch_configs``.
    Hierarchical anchors (``stitching_swin``, ``stitching_resnet_swin``): per
    stitched stage, per adjacent pair, :func:`forward_paired_stitching` for
    equal stage depths and :func:`unpaired_stitching` otherwise; the pair's
    stitch layers are numbered on across stages. The window options and
    non-neighbouring stitching exist in the official DeiT code only.
    """
    check_anchors(rows)
    out: list[Configuration] = []
    if all(not r.stages for r in rows):
        for combo in anchor_combinations(len(rows), stitching.nearest):
            rules = [pair_rule(rows[a].depth, rows[b].depth, stitching) for a, b in zip(combo, combo[1:])]
            if len(combo) == 2:
                out += [Configuration(combo, (cut,), (layer,)) for cut, layer in rules[0]]
                continue
            for cut, layer in rules[0]:
                out += [
                    Configuration(combo, (cut, cut2), (layer, layer2)) for cut2, layer2 in rules[1] if cut2[0] >= cut[1]
                ]
        return out
    if stitching != Stitching():
        raise ConfigError(
            f"snnet stitching options {stitching.to_json()} apply to plain ViT anchors only (the official DeiT code); "
            f"hierarchical anchors are stitched stage by stage as the official Swin / ResNet code does"
        )
    used: dict[int, int] = {}  # anchor pair (by front) -> layers numbered so far
    for s in stitched_stages(rows, stages):
        for a in range(len(rows) - 1):
            fd, ed = rows[a].stage_shapes[s][0], rows[a + 1].stage_shapes[s][0]
            if fd > ed:
                raise ConfigError(
                    f"SN-Net anchors must not get shallower within a stage, but stage {s} has {fd} blocks in anchor {a} "
                    f"and {ed} in anchor {a + 1}"
                )
            rule = forward_paired_stitching(fd) if fd == ed else unpaired_stitching(fd, ed)
            base = used.get(a, 0)
            out += [Configuration((a, a + 1), ((j, k),), (base + layer,), s) for (j, k), layer in rule]
            used[a] = base + len({layer for _, layer in rule})
    return out


def snnet_stitches(
    rows: Sequence[RowShape], stitching: Stitching = Stitching(), stages: Sequence[int] | None = None
) -> list[StitchSpec]:
    """One stitch layer per (anchor pair, layer id), named ``s<front>_<end>_<layer>``; its widths are the two
    anchors' widths (at the stitched stage for hierarchical anchors: the channels of the boundary it joins)."""
    specs: dict[str, StitchSpec] = {}
    for c in configurations(rows, stitching, stages):
        for (a, b), layer in zip(zip(c.anchors, c.anchors[1:]), c.layers):
            name = stitch_name(a, b, layer)
            if c.stage is None:
                widths = (rows[a].width, rows[b].width)
            else:
                widths = (rows[a].stage_shapes[c.stage][1], rows[b].stage_shapes[c.stage][1])
            specs.setdefault(name, StitchSpec(name, a, b, *widths))
    return list(specs.values())


def configuration_path(c: Configuration, rows: Sequence[RowShape]) -> Path:
    """The stitchkit path of a configuration (segments are half-open, blocks numbered across stages)."""
    offsets = [0] * len(c.anchors)
    if c.stage is not None:
        offsets = [rows[a].stage_starts[c.stage] for a in c.anchors]
    starts = (0, *(offsets[i + 1] + k for i, (_, k) in enumerate(c.cuts)))
    stops = (*(offsets[i] + j + 1 for i, (j, _) in enumerate(c.cuts)), rows[c.anchors[-1]].depth)
    return Path(
        tuple(Segment(a, start, stop) for a, start, stop in zip(c.anchors, starts, stops)),
        tuple(stitch_name(a, b, layer) for (a, b), layer in zip(zip(c.anchors, c.anchors[1:]), c.layers)),
        label=c.label,
    )


def snnet_paths(rows: Sequence[RowShape], stitching: Stitching = Stitching(), stages: Sequence[int] | None = None) -> list[Path]:
    """Anchors first (``anchor <i>``), then every configuration, in the official order."""
    check_anchors(rows)
    anchors = [Path((Segment(a, 0, r.depth),), (), label=f"anchor {a}") for a, r in enumerate(rows)]
    return anchors + [configuration_path(c, rows) for c in configurations(rows, stitching, stages)]
