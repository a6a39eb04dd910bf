"""SN-Net configuration enumeration, checked against closed forms and brute force written here."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

from stitchkit.core.errors import ConfigError
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape, Segment
from stitchkit_snnet import plugin
from stitchkit_snnet.configurations import nearest_mapping, paired_stitching, unpaired_stitching
from stitchkit_snnet.method import SNNetMethod


def brute_paired(depth: int) -> list[tuple[tuple[int, int], int]]:
    """Closed form of the sliding window of 2: pairs with |j - k| <= 1; the window
    starting at block w adds the pairs with max(j, k) = w + 1 (the first window
    also the (0, 0) pair), so the layer is max(max(j, k) - 1, 0); pairs come
    window by window, j-major inside a window."""
    pairs = [(j, k) for j, k in itertools.product(range(depth), repeat=2) if abs(j - k) <= 1]
    layer = {p: max(max(p) - 1, 0) for p in pairs}
    return [(p, layer[p]) for p in sorted(pairs, key=lambda p: (layer[p], p))]


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 12])
def test_paired_matches_closed_form(depth):
    assert paired_stitching(depth) == brute_paired(depth)


def test_paired_depth_12_official_counts():
    cfgs = paired_stitching(12)
    assert len(cfgs) == 34
    assert len({layer for _, layer in cfgs}) == 11
    # the first window shares layer 0 among four pairs, later windows add three
    assert cfgs[:7] == [((0, 0), 0), ((0, 1), 0), ((1, 0), 0), ((1, 1), 0), ((1, 2), 1), ((2, 1), 1), ((2, 2), 1)]


def torch_nearest(front: int, end: int) -> list[int]:
    """The official code's mapping: F.interpolate(mode='nearest') of front ids to end length."""
    ids = torch.arange(front, dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(ids, end).squeeze(0).squeeze(0).long().tolist()


@pytest.mark.parametrize("front,end", [(f, e) for e in range(2, 25) for f in range(1, e)])
def test_nearest_mapping_equals_official_interpolate(front, end):
    assert nearest_mapping(front, end) == torch_nearest(front, end)


def brute_unpaired(front: int, end: int) -> list[tuple[tuple[int, int], int]]:
    m = [int(Fraction(i * front, end)) for i in range(end)]  # floor, exactly
    pairs = [(j, k) for j in range(front) for k in range(end) if m[k] == j and j < k]
    layers = m[: len(pairs)]
    renumber = {old: i for i, old in enumerate(sorted(set(layers)))}
    return [(p, renumber[layer]) for p, layer in zip(pairs, layers)]


@pytest.mark.parametrize("front,end", [(2, 3), (6, 12), (12, 24), (3, 7), (5, 6)])
def test_unpaired_matches_brute_force(front, end):
    assert unpaired_stitching(front, end) == brute_unpaired(front, end)


def test_unpaired_by_hand():
    # 2 -> 3 blocks: end block 1 maps to front block 0, end block 2 to front block 1;
    # the official code zips the configurations with the mapping [0, 0, 1]: both use layer 0.
    assert unpaired_stitching(2, 3) == [((0, 1), 0), ((1, 2), 0)]
    # 6 -> 12: end block k maps to front block k // 2; 11 configurations on 6 layers
    cfgs = unpaired_stitching(6, 12)
    assert [p for p, _ in cfgs] == [(0, 1), (1, 2), (1, 3), (2, 4), (2, 5), (3, 6), (3, 7), (4, 8), (4, 9), (5, 10), (5, 11)]
    assert [layer for _, layer in cfgs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_unpaired_rejects_deeper_front():
    with pytest.raises(ConfigError, match="shallower"):
        unpaired_stitching(12, 6)


def rows3(depth=12):
    return [RowShape(depth, 192, 3), RowShape(depth, 384, 6), RowShape(depth, 768, 12)]


def test_method_three_equal_anchors():
    m = SNNetMethod()
    rows = rows3()
    stitches = m.stitches(rows)
    paths = m.paths(rows, stitches)
    assert len(stitches) == 22 and len(paths) == 71
    assert [p.label for p in paths[:3]] == ["anchor 0", "anchor 1", "anchor 2"]
    assert [p.segments for p in paths[:3]] == [(Segment(a, 0, 12),) for a in range(3)]
    # anchors first, then per pair in the closed-form order
    expected = [((0, 1), jk, layer) for jk, layer in brute_paired(12)] + [((1, 2), jk, layer) for jk, layer in brute_paired(12)]
    for p, ((a, b), (j, k), layer) in zip(paths[3:], expected):
        # official semantics: front runs blocks 0..j, end runs blocks k..L-1
        assert p.segments == (Segment(a, 0, j + 1), Segment(b, k, 12))
        assert p.stitches == (f"s{a}_{b}_{layer}",)
        assert p.label == f"{a}->{b} ({j},{k})"
    by_name = {s.name: s for s in stitches}
    assert by_name["s0_1_10"].src_width == 192 and by_name["s0_1_10"].dst_width == 384
    assert by_name["s1_2_0"].src_width == 384 and by_name["s1_2_0"].dst_width == 768
    for p in paths:
        p.validate([12, 12, 12], by_name)


def test_method_unequal_depths_uses_unpaired():
    m = SNNetMethod()
    rows = [RowShape(6, 64, 2), RowShape(12, 128, 4)]
    stitches = m.stitches(rows)
    paths = m.paths(rows, stitches)
    assert len(paths) == 2 + 11 and len(stitches) == 6
    assert paths[2].segments == (Segment(0, 0, 1), Segment(1, 1, 12))
    assert paths[-1].segments == (Segment(0, 0, 6), Segment(1, 11, 12))


def test_method_rejects_unordered_anchors_and_foreign_stitches():
    m = SNNetMethod()
    with pytest.raises(ConfigError, match="ordered by size"):
        m.stitches([RowShape(12, 384, 6), RowShape(12, 192, 3)])
    rows = rows3(4)
    with pytest.raises(ConfigError, match="missing"):
        m.paths(rows, m.stitches(rows)[:-1])


def test_registered_through_entry_point_and_plugin_module(registry):
    assert registry.provider("method", "snnet") == "snnet"
    assert registry.provider("initializer", "ls") == "snnet"
    iso = Registry(load_entrypoints=False)
    iso.register_plugin(plugin, name="snnet-test")
    assert isinstance(iso.method("snnet"), SNNetMethod)
    assert iso.get("initializer", "ls").needs_images is True


# --------------------------------------------------------------------------- stitching options
def test_window_by_hand():
    """Depth 4, kernel 3, stride 2: window [0,1,2] gives its 9 pairs (layer 0); window [2,3]
    adds (2,3) (3,2) (3,3) (layer 1); the next start, 4, is past the end."""
    first = [(j, k) for j in range(3) for k in range(3)]
    assert paired_stitching(4, 3, 2) == [(p, 0) for p in first] + [((2, 3), 1), ((3, 2), 1), ((3, 3), 1)]
    # stride > kernel skips blocks: windows [0] and [2]
    assert paired_stitching(4, 1, 2) == [((0, 0), 0), ((2, 2), 1)]
    with pytest.raises(ConfigError, match="kernel_size and stride must be >= 1"):
        SNNetMethod(kernel_size=0)


# (configurations incl. the 3 anchors, stitch layers) for DeiT-Ti/S/B (12 blocks), as the
# official get_stitch_configs(12, kernel, stride, 3, nearest) returns them (run on ziplab/SN-Net,
# stitching_deit/utils.py; the official code holds num_stitches layers per anchor pair).
OFFICIAL_COUNTS = {
    (2, 1, True): (71, 11), (2, 1, False): (732, 11), (3, 1, True): (111, 10), (3, 2, True): (91, 6),
    (2, 2, True): (51, 6), (4, 2, True): (131, 5), (3, 1, False): (1748, 10), (1, 1, True): (27, 12),
    (2, 3, True): (35, 4),
}


@pytest.mark.parametrize("options", sorted(OFFICIAL_COUNTS))
def test_official_counts(options):
    kernel, stride, nearest = options
    m = SNNetMethod(kernel, stride, nearest)
    rows = rows3()
    stitches = m.stitches(rows)
    configs, layers = OFFICIAL_COUNTS[options]
    assert len(m.paths(rows, stitches)) == configs
    assert len(stitches) == layers * (2 if nearest else 3)


def test_non_neighbouring_by_hand():
    """nearest = False on three 12-block anchors: 3 anchors + 3 pairs x 34 + 627 chains.

    Chains (j,k)(m,e) need m >= k. Paired configurations with first id j number 2 for
    j in {0, 11} and 3 otherwise, and so do those with second id k. Given k, the second
    stitch has 34 - (configurations with m < k) choices: 34 for k = 0, 32 - 3(k - 1) for
    k = 1..11. Sum: 2*34 + 3*sum_{k=1..10} (32 - 3(k-1)) + 2*2 = 68 + 555 + 4 = 627.
    """
    m = SNNetMethod(nearest_stitching=False)
    rows = rows3()
    stitches = m.stitches(rows)
    paths = m.paths(rows, stitches)
    assert len(paths) == 3 + 3 * 34 + 627
    assert len(stitches) == 33 and {s.name[:4] for s in stitches} == {"s0_1", "s0_2", "s1_2"}
    labels = [p.label for p in paths]
    assert labels[3 + 34] == "0->2 (0,0)" and labels[3 + 68] == "1->2 (0,0)"
    chain = paths[3 + 3 * 34]
    assert chain.label == "0->1->2 (0,0)(0,0)"
    assert chain.segments == (Segment(0, 0, 1), Segment(1, 0, 1), Segment(2, 0, 12))
    assert chain.stitches == ("s0_1_0", "s1_2_0")
    last = paths[-1]
    assert last.label == "0->1->2 (11,11)(11,11)"
    assert last.segments == (Segment(0, 0, 12), Segment(1, 11, 12), Segment(2, 11, 12))
    for p in paths:  # the middle anchor never runs backwards
        if len(p.segments) == 3:
            assert p.segments[1].start < p.segments[1].stop
    # two anchors: nearest or not, the same single pair
    two = rows[:2]
    assert [p.name for p in SNNetMethod(nearest_stitching=False).paths(two, SNNetMethod(nearest_stitching=False).stitches(two))] == \
        [p.name for p in SNNetMethod().paths(two, SNNetMethod().stitches(two))]
