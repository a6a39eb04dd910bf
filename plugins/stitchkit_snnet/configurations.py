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

from collections.abc import Sequence
from dataclasses import dataclass

from stitchkit.errors import ConfigError
from stitchkit.spec import Path, RowShape, Segment, StitchSpec, stitch_name


@dataclass(frozen=True)
class Configuration:
    """One stitched configuration between two adjacent anchors.

    ``front`` runs blocks ``0..j``, ``end`` runs blocks ``k..`` after stitch
    layer number ``layer`` of the pair. For hierarchical anchors ``j`` and
    ``k`` count blocks within ``stage`` (``None`` for plain ViTs).
    """

    front: int
    end: int
    j: int
    k: int
    layer: int
    stage: int | None = None


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


def pair_configurations(front: int, end: int, front_depth: int, end_depth: int) -> list[Configuration]:
    """Configurations from anchor ``front`` to anchor ``end``: paired for equal depths, else unpaired."""
    rule = paired_stitching(front_depth) if front_depth == end_depth else unpaired_stitching(front_depth, end_depth)
    return [Configuration(front, end, j, k, layer) for (j, k), layer in rule]


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


def configurations(rows: Sequence[RowShape], stages: Sequence[int] | None = None) -> list[Configuration]:
    """Every stitched configuration (anchors excluded), in the official order.

    Plain ViTs (one stage): per adjacent anchor pair, paired or unpaired
    stitching over all blocks. Hierarchical anchors: per stitched stage, per
    adjacent pair, :func:`forward_paired_stitching` for equal stage depths and
    :func:`unpaired_stitching` otherwise; the pair's stitch layers are
    numbered on across stages.
    """
    check_anchors(rows)
    out: list[Configuration] = []
    if all(not r.stages for r in rows):
        for a in range(len(rows) - 1):
            out += pair_configurations(a, a + 1, rows[a].depth, rows[a + 1].depth)
        return out
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
            out += [Configuration(a, a + 1, j, k, base + layer, s) for (j, k), layer in rule]
            used[a] = base + len({layer for _, layer in rule})
    return out


def snnet_stitches(rows: Sequence[RowShape], stages: Sequence[int] | None = None) -> list[StitchSpec]:
    """One stitch layer per (anchor pair, layer id), named ``s<front>_<end>_<layer>``; its widths are
    the two anchors' widths at the stitched stage (channels of the boundary it joins)."""
    specs: dict[str, StitchSpec] = {}
    for c in configurations(rows, stages):
        name = stitch_name(c.front, c.end, c.layer)
        if c.stage is None:
            widths = (rows[c.front].width, rows[c.end].width)
        else:
            widths = (rows[c.front].stage_shapes[c.stage][1], rows[c.end].stage_shapes[c.stage][1])
        specs.setdefault(name, StitchSpec(name, c.front, c.end, *widths))
    return list(specs.values())


def configuration_path(c: Configuration, rows: Sequence[RowShape]) -> Path:
    """The stitchkit path of a configuration (segments are half-open, blocks numbered across stages)."""
    f0 = e0 = 0
    label = f"{c.front}->{c.end} ({c.j},{c.k})"
    if c.stage is not None:
        f0, e0 = rows[c.front].stage_starts[c.stage], rows[c.end].stage_starts[c.stage]
        label = f"{c.front}->{c.end} stage {c.stage} ({c.j},{c.k})"
    return Path(
        (Segment(c.front, 0, f0 + c.j + 1), Segment(c.end, e0 + c.k, rows[c.end].depth)),
        (stitch_name(c.front, c.end, c.layer),),
        label=label,
    )


def snnet_paths(rows: Sequence[RowShape], stages: Sequence[int] | None = None) -> list[Path]:
    """Anchors first (``anchor <i>``), then every configuration, in the official order."""
    check_anchors(rows)
    anchors = [Path((Segment(a, 0, r.depth),), (), label=f"anchor {a}") for a, r in enumerate(rows)]
    return anchors + [configuration_path(c, rows) for c in configurations(rows, stages)]
