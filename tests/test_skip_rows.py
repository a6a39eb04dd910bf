"""Stitching that skips a row (``skip_rows``): path sets, TM init through the ancestry, planner counts."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_row
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape, parse_rows
from stitchkit.pool.pool import Pool
from stitchkit_learngene.config import LearngeneConfig
from stitchkit_learngene.extras import store_matrices
from stitchkit_learngene.initializers import TMInitializer
from stitchkit_learngene.method import LearngenePoolMethod

ROWS3 = [RowShape(3, 8, 2), RowShape(3, 16, 2), RowShape(3, 32, 4)]


def test_sequential_paths_by_hand_with_and_without_skipping():
    # depth 3, rows 0 < 1 < 2. Without skipping: 3 single rows, (0,1) and (1,2) at 2 cuts each, (0,1,2) at 1.
    plain = SequentialMethod()
    assert len(plain.paths(ROWS3, plain.stitches(ROWS3))) == 3 + 2 * 2 + 1
    assert [s.name for s in plain.stitches(ROWS3)] == ["s0_1_1", "s0_1_2", "s1_2_1", "s1_2_2"]
    # skipping adds the pair (0,2): 2 more stitch layers and 2 more paths
    skip = SequentialMethod(skip_rows=True)
    stitches = skip.stitches(ROWS3)
    assert [(s.name, s.src, s.dst, s.src_width, s.dst_width) for s in stitches if s.src == 0 and s.dst == 2] == [
        ("s0_2_1", 0, 2, 8, 32), ("s0_2_2", 0, 2, 8, 32)]
    names = {p.name for p in skip.paths(ROWS3, stitches)}
    assert len(names) == 3 + 3 * 2 + 1
    assert {"r0[0:1]+s0_2_1+r2[1:3]", "r0[0:2]+s0_2_2+r2[2:3]"} <= names
    rows = [tiny_row(s, seed=i) for i, s in enumerate(ROWS3)]
    pool = Pool.from_method(skip, rows).eval()  # the pool validates every path
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # row 0's stem and block 0, the stitch, row 2's blocks 1-2 and head, by hand
        h = pool.stitches["s0_2_1"](rows[0].blocks[0](rows[0].stem()(x)))
        want = rows[2].head()(rows[2].blocks[2](rows[2].blocks[1](h)))
        torch.testing.assert_close(pool.descendant("r0[0:1]+s0_2_1+r2[1:3]")(x), want, rtol=0, atol=0)


def official_pairs(depth: int) -> dict[tuple[int, int], int]:
    """The official ``paired_stitching``, restated: a window of two block ids slides by one; each window
    adds its ``(j, k)`` pairs not seen before, all on that window's stitch layer."""
    out: dict[tuple[int, int], int] = {}
    for i in range(depth):
        ids = list(range(depth))[i:i + 2]
        for j in ids:
            for k in ids:
                out.setdefault((j, k), i)
    return out


def test_sliding_window_skipping_contains_the_authors_18_tiny_to_base_descendants():
    rows = [RowShape(6, 192, 3), RowShape(6, 384, 6), RowShape(6, 768, 12)]
    method = LearngenePoolMethod("sliding-window", skip_rows=True)
    paths = method.paths(rows, method.stitches(rows))
    # the official 3-instance pool evaluates configurations 0 (tiny), 2 (base) and 19..34: tiny -> base
    # pair (j, k): tiny runs blocks 0..j, the window's stitch layer (1-based name), base runs k..5
    expected = {f"r0[0:{j + 1}]+s0_2_{m + 1}+r2[{k}:6]" for (j, k), m in official_pairs(6).items()}
    assert len(expected) == 16
    assert {p.name for p in paths if p.rows == (0, 2)} == expected
    assert {p.name for p in paths if p.is_single_row} == {"r0[0:6]", "r1[0:6]", "r2[0:6]"}
    # without skipping no path joins rows 0 and 2 directly
    plain = LearngenePoolMethod("sliding-window")
    assert not [p for p in plain.paths(rows, plain.stitches(rows)) if p.rows == (0, 2)]


def test_tm_composes_a_skipping_stitch_through_the_ancestry():
    """``x_a ~ x_anc @ A_a``: the stitch a -> c gets ``A_c.T @ A_a`` as for adjacent rows; row 2 is as wide
    as the ancestry (``A_2 = I``), so ``s0_2`` is row 0's averaged W and ``s0_1`` is ``A_1.T @ A_0``."""
    pool = Pool.from_method(SequentialMethod(skip_rows=True), [tiny_row(s, seed=i) for i, s in enumerate(ROWS3)])
    pool.info.setdefault("learngene", {})["ancestry"] = {"width": 32}
    g = torch.Generator().manual_seed(0)
    w0 = [torch.randn(32, 8, generator=g) for _ in range(3)]
    w1 = [torch.randn(32, 16, generator=g) for _ in range(2)]
    store_matrices(pool.extras, 0, "W", w0)
    store_matrices(pool.extras, 1, "W", w1)
    TMInitializer().initialize(pool, InitContext())
    a0, a1 = sum(w0) / 3, sum(w1) / 2
    for k in (1, 2):
        torch.testing.assert_close(pool.stitches[f"s0_2_{k}"].weight.detach(), a0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pool.stitches[f"s0_1_{k}"].weight.detach(), (a1.T @ a0), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pool.stitches[f"s1_2_{k}"].weight.detach(), a1, rtol=1e-5, atol=1e-5)
        assert not pool.stitches[f"s0_2_{k}"].bias.any()


def test_planner_counts_skipping_paths_as_the_same_path_in_a_two_row_pool():
    from stitchkit.apps.planner import plan

    registry = Registry()
    three = plan("learngene-pool", ancestry="deit_base_patch16_224", rows=parse_rows("6x192:3,6x384:6,6x768:12"),
                 method_options={"skip_rows": True}, registry=registry)
    plain = plan("learngene-pool", ancestry="deit_base_patch16_224", rows=parse_rows("6x192:3,6x384:6,6x768:12"), registry=registry)
    # 3 single rows + 3 row pairs x 5 cuts + C(5, 2) through all three; without skipping 2 pairs
    assert (len(three["descendants"]), len(plain["descendants"])) == (3 + 3 * 5 + 10, 3 + 2 * 5 + 10)
    assert three["stitch_layers"] == 3 * 5 and three["stitch_params"] == plain["stitch_params"] + 5 * (192 * 768 + 768)
    # a tiny -> base path costs what the same path costs in the two-row pool (rows 192 and 768 only)
    two = plan("learngene-pool", ancestry="deit_base_patch16_224", rows=parse_rows("6x192:3,6x768:12"), registry=registry)
    by_name = {d["name"]: d for d in three["descendants"]}
    for d in two["descendants"]:
        if "+" in d["name"]:
            mine = by_name[d["name"].replace("s0_1_", "s0_2_").replace("r1[", "r2[")]
            assert (mine["params"], mine["macs"]) == (d["params"], d["macs"])


def test_skip_rows_options_are_checked():
    with pytest.raises(ConfigError, match="skip_rows needs the sequential or sliding-window paths"):
        LearngenePoolMethod("two-way", skip_rows=True)
    with pytest.raises(ConfigError, match=r"learngene.skip_rows needs paths 'sequential' or 'sliding-window'"):
        LearngeneConfig(paths="two-way", skip_rows=True).validate()
