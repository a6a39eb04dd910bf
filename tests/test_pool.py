"""Pools and descendants: every path builds and runs; counts match hand formulas;
a descendant computes exactly the hand-written composition of its blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import block_params, head_params, stem_params, tiny_row
from stitchkit.core.errors import ConfigError, PathError
from stitchkit.pool.measure import count_macs, count_params
from stitchkit.pool.pool import Pool
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import Path, RowShape, Segment, parse_rows


@st.composite
def designs(draw):
    n_rows = draw(st.integers(1, 3))
    depth = draw(st.integers(1, 4))
    heads = sorted(draw(st.lists(st.integers(1, 3), min_size=n_rows, max_size=n_rows)))
    head_dim = draw(st.sampled_from([4, 8]))
    shapes = [RowShape(depth, h * head_dim, h) for h in heads]
    patch = draw(st.sampled_from([4, 8]))
    img = patch * draw(st.integers(1, 3))
    chans = draw(st.sampled_from([1, 3]))
    classes = draw(st.integers(2, 6))
    return shapes, img, patch, chans, classes


@settings(max_examples=15, deadline=None)
@given(designs())
def test_every_path_builds_runs_and_counts(design):
    shapes, img, patch, chans, classes = design
    rows = [tiny_row(s, seed=i, img=img, patch=patch, chans=chans, classes=classes) for i, s in enumerate(shapes)]
    pool = Pool.from_method(SequentialMethod(), rows)
    x = torch.randn(2, chans, img, img)
    n_paths = 0
    for path in pool.paths:
        d = pool.descendant(path).eval()
        assert d(x).shape == (2, classes)
        first, last = shapes[path.segments[0].row], shapes[path.segments[-1].row]
        expected = stem_params(first.width, img, patch, chans) + head_params(last.width, classes)
        expected += sum(len(s) * block_params(shapes[s.row].width) for s in path.segments)
        for a, b in zip(path.segments, path.segments[1:]):
            expected += shapes[a.row].width * shapes[b.row].width + shapes[b.row].width
        assert count_params(d) == expected
        assert pool.path_macs(path) == count_macs(d)  # sum of parts == whole-module count
        n_paths += 1
    # brute force: a path picks a first and last row and cut points; every segment non-empty
    from itertools import combinations

    depth = shapes[0].depth
    brute = sum(
        len(list(combinations(range(1, depth), last - first)))
        for first in range(len(shapes))
        for last in range(first, len(shapes))
    )
    assert n_paths == brute
    stitch_total = (len(shapes) - 1) * (depth - 1)
    assert len(pool.stitches) == stitch_total


def test_descendant_equals_hand_composition():
    narrow, wide = tiny_row(RowShape(4, 16, 2), seed=1), tiny_row(RowShape(4, 32, 4), seed=2)
    pool = Pool.from_method(SequentialMethod(), [narrow, wide]).eval()
    path = pool.path("r0[0:3]+s0_1_3+r1[3:4]")
    x = torch.randn(3, 3, 16, 16)
    m0, m1 = narrow.model, wide.model
    with torch.no_grad():
        h = m0.patch_embed(x)
        h = torch.cat([m0.cls_token.expand(3, -1, -1), h], dim=1) + m0.pos_embed
        for b in range(3):
            h = m0.blocks[b](h)
        stitch = pool.stitches["s0_1_3"]
        h = h @ stitch.weight.T + stitch.bias
        h = m1.blocks[3](h)
        expected = m1.head(m1.norm(h)[:, 0])
        got = pool.descendant(path)(x)
    assert torch.equal(got, expected)


def test_single_row_descendant_equals_timm_model():
    row = tiny_row(RowShape(3, 24, 3), seed=3)
    pool = Pool.from_method(SequentialMethod(), [row]).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(pool.descendant(0)(x), row.model(x))


def test_shared_descendant_trains_the_pool_and_copy_is_independent():
    rows = [tiny_row(RowShape(2, 16, 2), seed=1), tiny_row(RowShape(2, 32, 4), seed=2)]
    pool = Pool.from_method(SequentialMethod(), rows)
    path = pool.path("r0[0:1]+s0_1_1+r1[1:2]")
    shared, copied = pool.descendant(path), pool.descendant(path, copy=True)
    assert shared.stitches[0].weight is pool.stitches["s0_1_1"].weight
    assert copied.stitches[0].weight is not pool.stitches["s0_1_1"].weight
    before = pool.stitches["s0_1_1"].weight.detach().clone()
    with torch.no_grad():
        copied.stitches[0].weight.add_(1.0)
    assert torch.equal(pool.stitches["s0_1_1"].weight, before)
    with torch.no_grad():
        shared.stitches[0].weight.add_(1.0)
    assert torch.equal(pool.stitches["s0_1_1"].weight, before + 1.0)


def test_path_lookup_and_errors():
    rows = [tiny_row(RowShape(2, 16, 2)), tiny_row(RowShape(2, 32, 4))]
    pool = Pool.from_method(SequentialMethod(), rows)
    assert pool.path(0) == pool.paths[0]
    assert pool.path("2") == pool.paths[2]
    with pytest.raises(PathError, match="out of range"):
        pool.path(99)
    with pytest.raises(PathError, match="no descendant named"):
        pool.path("r9[0:1]")
    bad = Path((Segment(1, 0, 1), Segment(0, 1, 2)), ("s0_1_1",))
    with pytest.raises(PathError, match="joins row 0 to row 1"):
        pool.descendant(bad)
    with pytest.raises(PathError, match="must start at block 0"):
        pool.descendant(Path((Segment(0, 1, 2),)))
    with pytest.raises(PathError, match="needs 1 stitch"):
        Path((Segment(0, 0, 1), Segment(1, 1, 2)))


def test_pool_validation_errors():
    narrow, wide = tiny_row(RowShape(2, 16, 2)), tiny_row(RowShape(2, 32, 4))
    with pytest.raises(ConfigError, match="sorted by width"):
        Pool.from_method(SequentialMethod(), [wide, narrow])
    with pytest.raises(ConfigError, match="equal depth"):
        Pool.from_method(SequentialMethod(), [narrow, tiny_row(RowShape(3, 32, 4))])


def test_parse_rows():
    assert parse_rows("6x192:3, 6x768:12") == [RowShape(6, 192, 3), RowShape(6, 768, 12)]
    with pytest.raises(ConfigError, match="DEPTHxWIDTH:HEADS"):
        parse_rows("6by192")
    assert parse_rows("6x192") == [RowShape(6, 192, 0)]  # no heads: blocks without attention (a CNN)
    swin_t = parse_rows("2x96:3/2x192:6/6x384:12/2x768:24")[0]
    assert (swin_t.depth, swin_t.width, swin_t.heads, swin_t.stage_starts) == (12, 768, 24, [0, 2, 4, 10])
    assert str(swin_t) == "2x96:3/2x192:6/6x384:12/2x768:24" and RowShape.from_json(swin_t.to_json()) == swin_t
    assert [swin_t.width_at(b) for b in (0, 1, 2, 3, 5, 10, 11, 12)] == [96, 96, 96, 192, 384, 384, 768, 768]
    assert parse_rows("6x190:3") == [RowShape(6, 190, 3)]  # heads are data: a ViT refuses it (test_levit.py), a LeViT need not


def _cache_pool() -> Pool:
    rows = [tiny_row(RowShape(3, 16, 2), seed=1), tiny_row(RowShape(3, 32, 4), seed=2)]
    return Pool.from_method(SequentialMethod(), rows).eval()


def test_descendants_are_cached_and_share_the_pools_parameters():
    pool = _cache_pool()
    path = pool.path("r0[0:2]+s0_1_2+r1[2:3]")
    first = pool.descendant(path)
    # by object, index, name and label: the same module, built once
    assert pool.descendant(path) is first
    assert pool.descendant(pool.paths.index(path)) is first
    assert pool.descendant(path.name) is first
    pool_params = {id(p) for p in pool.parameters()}
    assert {id(p) for p in first.parameters()} <= pool_params  # shared, not copied
    assert pool.descendant(path, copy=True) is not first
    assert not {id(p) for p in pool.descendant(path, copy=True).parameters()} & pool_params
    assert pool.descendant(0) is not first and pool.descendant(0) is pool.descendant(0)


def _forward(d, x):
    with torch.no_grad():
        return d(x)


def test_descendant_cache_follows_replaced_stitch_layers_blocks_and_rows():
    pool = _cache_pool()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    name = "r0[0:2]+s0_1_2+r1[2:3]"
    old = pool.descendant(name)
    old_out = _forward(old, x)

    # a new stitch layer: the descendant is rebuilt around it, and computes with it
    layer = torch.nn.Linear(16, 32)
    pool.stitches["s0_1_2"] = layer
    new = pool.descendant(name)
    assert new is not old and new.stitches[0] is layer
    assert not torch.equal(_forward(new, x), old_out)
    assert pool.descendant(name) is new  # and cached again

    # a block replaced inside a row
    block = torch.nn.Identity()
    pool.rows[0].blocks[1] = block
    assert pool.descendant(name).segments[0][1] is block
    unchanged = pool.descendant("r1[0:3]")
    assert pool.descendant("r1[0:3]") is unchanged

    # a whole row, through replace_row: every descendant using it changes
    row = tiny_row(RowShape(3, 32, 4), seed=7)
    pool.replace_row(1, row)
    d = pool.descendant("r1[0:3]")
    assert d is not unchanged and d.segments[0][0] is row.model.blocks[0]
    with torch.no_grad():
        assert torch.equal(d(x), row.model.eval()(x))
    with pytest.raises(ConfigError, match="must have that shape"):
        pool.replace_row(1, tiny_row(RowShape(3, 16, 2)))


def test_deep_copied_pool_has_its_own_cache():
    import copy

    pool = _cache_pool()
    d = pool.descendant(1)
    twin = copy.deepcopy(pool)
    twin_d = twin.descendant(1)
    assert twin_d is not d and twin_d.stitches[0] is twin.stitches[twin.paths[1].stitches[0]]
    layer = torch.nn.Linear(16, 32)
    twin.stitches[twin.paths[1].stitches[0]] = layer
    assert twin.descendant(1).stitches[0] is layer
    # the original keeps its own layer (a change anywhere may rebuild, never mix up, cached descendants)
    assert pool.descendant(1).stitches[0] is pool.stitches[pool.paths[1].stitches[0]] is d.stitches[0]


def test_exporting_from_a_pool_leaves_its_cached_descendants_alone(tmp_path):
    """Export merges low-rank stitch layers in place: on a fresh module, never the pool's cached one."""
    from stitchkit.pool.lowrank import LowRankLinear
    from stitchkit.io.storage import export_descendant, load_exported

    rows = [tiny_row(RowShape(2, 16, 2), seed=1), tiny_row(RowShape(2, 32, 4), seed=2)]
    pool = Pool.from_method(SequentialMethod(), rows, stitch_rank=2).eval()
    d = pool.descendant(1)
    export_descendant(pool, 1, tmp_path / "d.safetensors")
    assert pool.descendant(1) is d
    assert isinstance(d.stitches[0], LowRankLinear) and d.stitches[0] is pool.stitches[pool.paths[1].stitches[0]]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "d.safetensors").eval()(x), d(x), rtol=1e-5, atol=1e-6)
