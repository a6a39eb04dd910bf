"""SN-Netv2's two-way enumeration against counts derived from the official code, and a brute force."""

from __future__ import annotations

import itertools
import json
from math import comb

import pytest
import torch

from helpers import tiny_row
from stitchkit.core.errors import ConfigError
from stitchkit.pool.measure import count_params
from stitchkit.pool.pool import Pool
from stitchkit.core.spec import RowShape
from stitchkit_snnetv2.configurations import routes
from stitchkit_snnetv2.method import SNNetv2Method

DEIT_TI, DEIT_S, DEIT_B = RowShape(12, 192, 3), RowShape(12, 384, 6), RowShape(12, 768, 12)
DEIT3_S, DEIT3_B, DEIT3_L = RowShape(12, 384, 6), RowShape(12, 768, 12), RowShape(24, 1024, 16)


def kinds(rows, **kw):
    counts: dict[str, int] = {}
    for r in routes(rows, **kw):
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return counts


@pytest.mark.parametrize("rows", [(DEIT3_S, DEIT3_B), (DEIT_TI, DEIT_S), (DEIT3_S, DEIT3_L)], ids=["deit3-s-b", "deit-ti-s", "deit3-s-l"])
def test_official_counts(rows):
    # ziplab/SN-Netv2 classification/snnet.py get_stitch_configs_bidirection for two 12-block small
    # anchors: 2 anchors + 11 sl + 11 ls + 55 lsl + 55 sls = 134 trained configurations (the 12th sl,
    # "front == 11", is left out); classification/results/stitches_res_s_l.txt lists 134 results for S/L.
    method = SNNetv2Method()
    stitches = method.stitches(list(rows))
    paths = method.paths(list(rows), stitches)
    assert kinds(list(rows)) == {"sl": 11, "ls": 11, "lsl": 55, "sls": 55}
    assert len(paths) == 134
    assert len(stitches) == 22  # 11 per direction; the official code also allocates the 12th, unused, sl layer
    assert {(s.src, s.dst) for s in stitches} == {(0, 1), (1, 0)}


def test_the_left_out_configuration_is_the_small_anchor_with_the_large_head():
    rows = [DEIT3_S, DEIT3_B]
    method = SNNetv2Method(head_only=True)
    paths = method.paths(rows, method.stitches(rows))
    assert len(paths) == 135 and len(method.stitches(rows)) == 23
    extra = set(p.name for p in paths) - set(p.name for p in SNNetv2Method().paths(rows, SNNetv2Method().stitches(rows)))
    assert extra == {"r0[0:12]+s0_1_11+r1[12:12]"}


def brute_force(l_small: int, l_large: int) -> set[str]:
    """Every 1-3 segment route alternating anchors, stitching only at paired boundaries (q, q*L//l),
    every segment non-empty, q < l: the rule the official code implements, by exhaustion."""
    pairs = [(q, q * l_large // l_small) for q in range(1, l_small)]
    depth = {0: l_small, 1: l_large}
    out = {"r0[0:%d]" % l_small, "r1[0:%d]" % l_large}
    for first in (0, 1):
        for n in (1, 2):
            for cuts in itertools.product(pairs, repeat=n):
                rows = [first ^ (i % 2) for i in range(n + 1)]
                starts, stops, names = [0], [], []
                for i, (q, p) in enumerate(cuts):
                    stops.append(q if rows[i] == 0 else p)
                    starts.append(p if rows[i] == 0 else q)
                    names.append(f"s{rows[i]}_{rows[i + 1]}_{q - 1}")
                stops.append(depth[rows[-1]])
                if all(a < b for a, b in zip(starts, stops)):
                    segs = [f"r{r}[{a}:{b}]" for r, a, b in zip(rows, starts, stops)]
                    out.add("+".join(x for pair in itertools.zip_longest(segs, names) for x in pair if x))
    return out


@pytest.mark.parametrize("depths", [(12, 12), (12, 24), (6, 6), (3, 6), (4, 12), (5, 7)])
def test_enumeration_equals_brute_force(depths):
    rows = [RowShape(depths[0], 16, 2), RowShape(depths[1], 32, 4)]
    method = SNNetv2Method()
    names = [p.name for p in method.paths(rows, method.stitches(rows))]
    assert len(names) == len(set(names))
    assert set(names) == brute_force(*depths)
    l = depths[0]
    assert len(names) == 2 + 2 * (l - 1) + 2 * comb(l - 1, 2)  # = l * (l - 1) + 2


def test_official_order_and_route_options():
    rows = [RowShape(4, 16, 2), RowShape(8, 32, 4)]
    paths = SNNetv2Method().paths(rows, SNNetv2Method().stitches(rows))
    assert [p.label for p in paths] == [
        "anchor 0", "anchor 1", "sl 1", "sl 2", "sl 3", "ls 1", "ls 2", "ls 3",
        "lsl 1,2", "lsl 1,3", "lsl 2,3", "sls 1,2", "sls 1,3", "sls 2,3",
    ]
    # official: large -> small at large block i = 3 (odd, 0-based) resumes the small anchor at block 2
    assert paths[6].name == "r1[0:4]+s1_0_1+r0[2:4]"
    assert paths[8].name == "r1[0:2]+s1_0_0+r0[1:2]+s0_1_1+r1[4:8]"
    assert paths[11].name == "r0[0:1]+s0_1_0+r1[2:4]+s1_0_1+r0[2:4]"
    one_way = SNNetv2Method(routes=["sl", "ls"])
    assert len(one_way.paths(rows, one_way.stitches(rows))) == 2 + 3 + 3


@pytest.mark.parametrize(
    "rows, kw, match",
    [
        ([DEIT_TI, DEIT_S, DEIT_B], {}, "exactly two anchors .* for three or more use method 'snnet'"),
        ([DEIT_S, DEIT_TI], {}, "ordered by size"),
        ([DEIT_TI, DEIT_S], {"routes": ["sl", "lls"]}, "routes must be among sl, ls, lsl, sls, got lls"),
        ([DEIT_TI, DEIT_S], {"routes": []}, "non-empty list"),
    ],
)
def test_bad_input(rows, kw, match):
    with pytest.raises(ConfigError, match=match):
        method = SNNetv2Method(**kw)
        method.paths(rows, method.stitches(rows))


def test_paths_run_and_storage_is_hand_counted():
    torch.manual_seed(0)
    rows = [tiny_row(RowShape(3, 16, 2)), tiny_row(RowShape(3, 32, 4))]
    pool = Pool.from_method(SNNetv2Method(head_only=True), rows)
    x = torch.randn(2, 3, 16, 16)
    outs = {p.name: pool.descendant(p)(x) for p in pool.paths}
    assert len(outs) == 2 + 3 + 2 + 1 + 1 and all(o.shape == (2, 5) for o in outs.values())
    # 3 sl layers 16 -> 32, 2 ls layers 32 -> 16
    stitch = 3 * (16 * 32 + 32) + 2 * (32 * 16 + 16)
    assert pool.storage_params() == count_params(rows[0].model) + count_params(rows[1].model) + stitch


def test_cli_plan_json(capsys):
    from stitchkit.cli.main import main

    assert main(["plan", "--method", "snnetv2", "--anchors", "deit_tiny_patch16_224,deit_small_patch16_224", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stitch_layers"] == 22 and len(result["descendants"]) == 134
    macs = {d["label"]: d["macs"] for d in result["descendants"]}
    # every route mixes blocks of both anchors (plus stitch layers): the anchors bracket them all
    assert macs["anchor 0"] < min(v for k, v in macs.items() if k != "anchor 0")
    assert macs["anchor 1"] > max(v for k, v in macs.items() if k != "anchor 1")


# --------------------------------------------------------------------------- ros sampler
from stitchkit.components.samplers import ROSSampler, group_by_gap  # noqa: E402
from stitchkit.core.spec import Path, Segment  # noqa: E402

MACS = [10, 3, 5, 12, 4, 20, 21, 9]


def fake_paths(n: int) -> list[Path]:
    return [Path((Segment(0, 0, i + 1),), (), label=str(i)) for i in range(n)]


def test_ros_groups_by_gap_from_each_groups_first_path():
    # sorted: 3(1) 4(4) 5(2) | 9(7) 10(0) | 12(3) | 20(5) 21(6); a path joins while MACs - first <= gap
    assert group_by_gap(MACS, 2) == [[1, 2, 4], [0, 7], [3], [5, 6]]
    assert group_by_gap(MACS, 0) == [[1], [4], [2], [7], [0], [3], [5], [6]]
    assert group_by_gap(MACS, 18) == [list(range(8))]
    assert group_by_gap([5, 5, 5], 0) == [[0, 1, 2]]
    # gap_fraction 0.1 of the range 21 - 3 = 18 is 1.8 MACs
    s = ROSSampler(fake_paths(8), MACS, gap_fraction=0.1)
    assert [[int(p.label) for p in g] for g in s.groups] == [[1, 4], [2], [0, 7], [3], [5, 6]]
    assert ROSSampler(fake_paths(8), [m * 10**9 for m in MACS]).gap == 1e9  # the official 1 GFLOPs gap


def test_ros_draws_groups_uniformly_or_linearly():
    paths = fake_paths(8)
    uniform = ROSSampler(paths, MACS, gap=2)
    torch.testing.assert_close(uniform.weights, torch.full((4,), 0.25, dtype=torch.float64))
    linear = ROSSampler(paths, MACS, gap=2, weighting="linear", k=1.0)
    # official --flops_sampling_k: y_i = i / k + 1 / G, normalised
    torch.testing.assert_close(linear.weights, torch.tensor([0.25, 1.25, 2.25, 3.25], dtype=torch.float64) / 7)
    g = torch.Generator().manual_seed(0)
    n = 8000
    counts = [0] * 4
    group_of = {int(p.label): gi for gi, grp in enumerate(uniform.groups) for p in grp}
    for _ in range(n):
        (p,) = uniform.sample(g)
        counts[group_of[int(p.label)]] += 1
    sd = (n * 0.25 * 0.75) ** 0.5
    assert all(abs(c - n / 4) < 4 * sd for c in counts), counts
    # the same generator state gives the same paths: ranks agree
    a = [uniform.sample(torch.Generator().manual_seed(7))[0].label for _ in range(3)]
    b = [uniform.sample(torch.Generator().manual_seed(7))[0].label for _ in range(3)]
    assert a == b


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"gap": 1, "gap_fraction": 0.1}, "not both"),
        ({"gap_fraction": 1.5}, "0 <= gap_fraction <= 1"),
        ({"gap": -1}, "gap >= 0"),
        ({"weighting": "log"}, "'uniform' or 'linear'"),
        ({"k": 0}, "k > 0"),
    ],
)
def test_ros_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        ROSSampler(fake_paths(8), MACS, **kw)
    with pytest.raises(ConfigError, match="needs the MACs"):
        ROSSampler(fake_paths(8))


# --------------------------------------------------------------------------- two-way Learngene Pool
def test_learngene_two_way_paths_and_tm_in_both_directions():
    from stitchkit_learngene.initializers import TMInitializer
    from stitchkit_learngene.method import LearngenePoolMethod
    from stitchkit.core.interfaces import InitContext
    from stitchkit.pool.lowrank import LowRankLinear

    torch.manual_seed(0)
    rows = [tiny_row(RowShape(3, 16, 2)), tiny_row(RowShape(3, 32, 4))]
    pool = Pool.from_method(LearngenePoolMethod(paths="two-way"), rows, stitch_rank=2)
    assert [p.label for p in pool.paths][:2] == ["row 0", "row 1"] and len(pool.paths) == 3 * 2 + 2
    assert sorted(pool.stitches) == ["s0_1_0", "s0_1_1", "s1_0_0", "s1_0_1"]
    init = TMInitializer.example(pool=pool)  # W (32 x 16) for the narrow row; the wide row is the ancestry's width
    init.initialize(pool, InitContext())
    w = torch.stack([v for k, v in pool.extras.items()]).mean(0)
    for name, layer in pool.stitches.items():
        assert isinstance(layer, LowRankLinear)
        # narrow -> wide: x_anc ~ x_narrow @ W.T, weight W (32 x 16); wide -> narrow: x_narrow ~ x_wide @ W, weight W.T
        torch.testing.assert_close(layer.weight, w if name.startswith("s0_1") else w.t())
    x = torch.randn(2, 3, 16, 16)
    assert all(pool.descendant(p)(x).shape == (2, 5) for p in pool.paths)
