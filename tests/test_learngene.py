"""Learngene Pool plugin, everything that does not train: level mapping,
distillation losses (against direct formulas), auxiliary designs, paths,
TM / TM-pinv / LS stitch initialisation and planning."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from helpers import tiny_row
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext, TapRequest, Taps
from stitchkit.pool.pool import Pool
from stitchkit.core.spec import RowShape, parse_rows
from stitchkit.families.vit import TimmViT
from stitchkit_learngene.designs import DepthReduced, PoolDesign, WidthReduced, uniform_block_selection
from stitchkit_learngene.extras import matrix_key, row_matrices, store_matrices
from stitchkit_learngene.levels import default_levels, level_ends, level_pairs
from stitchkit_learngene.losses import AttentionLoss, BlockLoss, LearngeneDistillation, PredictionLoss
from stitchkit_learngene.method import LearngenePoolMethod
from stitchkit_learngene.paths import paired_stitching, sliding_window_paths


# --------------------------------------------------------------------------- levels
def test_dense_mapping_matches_the_paper():
    assert level_ends(12, 3) == [4, 8, 12]
    assert level_pairs(12, 6, "dense") == [(3, 1), (7, 3), (11, 5)]  # 4,8,12 -> 2,4,6 (1-based)
    assert level_pairs(12, 9, "dense") == [(3, 2), (7, 5), (11, 8)]  # 4,8,12 -> 3,6,9
    assert level_pairs(12, 6, "last") == [(11, 5)]
    assert level_pairs(12, 9, 1) == [(11, 8)]


def test_general_level_rule_rounds_half_up():
    # level i of n ends at round(i * depth / n): 10/3 = 3.33 -> 3, 20/3 = 6.67 -> 7
    assert level_ends(10, 3) == [3, 7, 10]
    assert level_ends(4, 3) == [1, 3, 4]
    assert level_ends(6, 4) == [2, 3, 5, 6]  # 1.5 -> 2 (half up), 4.5 -> 5
    assert level_ends(7, 7) == list(range(1, 8))


def test_default_levels_follow_the_ablation():
    assert default_levels(RowShape(12, 768, 12), RowShape(6, 192, 3)) == 3  # dense
    assert default_levels(RowShape(12, 768, 12), RowShape(6, 768, 12)) == 1  # last block
    assert default_levels(RowShape(12, 768, 12), RowShape(2, 192, 3)) == 2  # too shallow for three levels


@pytest.mark.parametrize("depth,levels", [(2, 3), (5, 0)])
def test_too_many_levels_is_a_config_error(depth, levels):
    with pytest.raises(ConfigError, match="level"):
        level_ends(depth, levels)


def test_unknown_level_name_is_a_config_error():
    with pytest.raises(ConfigError, match="'dense'"):
        level_pairs(12, 6, "thick")


# --------------------------------------------------------------------------- losses
def _taps(logits, blocks=None, attentions=None):
    return Taps(logits=logits, blocks=dict(blocks or {}), attentions=dict(attentions or {}))


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_prediction_loss_is_soft_cross_entropy(tau):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    loss = PredictionLoss(tau)(_taps(s), _taps(t))
    sn, tn = s.double().numpy() / tau, t.double().numpy() / tau
    p = np.exp(tn) / np.exp(tn).sum(1, keepdims=True)
    log_q = sn - np.log(np.exp(sn).sum(1, keepdims=True))
    expected = float(-(p * log_q).sum(1).mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert list(PredictionLoss().parameters()) == []
    # the official code's reduction: the mean over all 4 x 5 elements, 1/5 of the above
    mean = PredictionLoss(tau, reduction="mean")(_taps(s), _taps(t))
    assert mean.item() == pytest.approx(float(-(p * log_q).mean()), rel=1e-5)
    assert mean.item() == pytest.approx(expected / 5, rel=1e-5)


def test_prediction_loss_rejects_bad_tau_and_reduction():
    with pytest.raises(ConfigError, match="tau"):
        PredictionLoss(0.0)
    with pytest.raises(ConfigError, match="reduction must be one of sum-classes, mean, got 'sum'"):
        PredictionLoss(reduction="sum")


def test_reduction_reaches_distillation_and_finetuning():
    """The [learngene] key reaches L_pred in distillation (the loss) and in fine-tuning (PoolTask)."""
    from stitchkit.engine.tasks import PoolTask, soft_cross_entropy
    from stitchkit_learngene.config import LearngeneConfig

    loss = LearngeneDistillation(RowShape(2, 8, 2), RowShape(2, 4, 2), terms=("prediction",), reduction="mean")
    assert loss.losses["prediction"].reduction == "mean"
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    assert soft_cross_entropy(s, t, reduction="mean").item() == pytest.approx(soft_cross_entropy(s, t).item() / 10, rel=1e-6)
    with pytest.raises(ConfigError, match="reduction must be one of"):
        PoolTask(None, None, reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="learngene.prediction_reduction must be one of"):
        LearngeneConfig(prediction_reduction="sum").validate()


@pytest.mark.parametrize("cls,tap", [(BlockLoss, "blocks"), (AttentionLoss, "attentions")])
def test_transformed_mse_against_direct_formula(cls, tap):
    g = torch.Generator().manual_seed(1)
    pairs = [(3, 1), (7, 3), (11, 5)]
    loss = cls(16, 8, pairs)
    assert [tuple(w.shape) for w in loss.parameters()] == [(16, 8)] * 3  # one d x d' matrix per level
    teacher = {t: torch.randn(2, 5, 16, generator=g) for t, _ in pairs}
    student = {s: torch.randn(2, 5, 8, generator=g) for _, s in pairs}
    value = loss(_taps(torch.zeros(2, 3), **{tap: student}), _taps(torch.zeros(2, 3), **{tap: teacher}))
    expected = 0.0
    for (t, s), w in zip(pairs, loss.matrices):
        diff = teacher[t].double().numpy() @ w.detach().double().numpy() - student[s].double().numpy()
        expected += float((diff**2).mean())
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert getattr(loss.teacher_taps(), tap) == (3, 7, 11)
    assert getattr(loss.student_taps(), tap) == (1, 3, 5)


@pytest.mark.parametrize("cls,tap", [(BlockLoss, "blocks"), (AttentionLoss, "attentions")])
def test_same_width_is_identity_without_parameters(cls, tap):
    g = torch.Generator().manual_seed(2)
    loss = cls.for_models(RowShape(12, 16, 4), RowShape(6, 16, 4))
    assert list(loss.parameters()) == [] and loss.pairs == [(11, 5)]  # last block only by default
    t, s = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    value = loss(_taps(torch.zeros(1), **{tap: {5: s}}), _taps(torch.zeros(1), **{tap: {11: t}}))
    assert value.item() == pytest.approx(float(((t - s) ** 2).mean()), rel=1e-6)


def test_gradients_reach_w_and_student_but_not_teacher():
    loss = BlockLoss(16, 8, [(0, 0)])
    t = torch.randn(2, 3, 16, requires_grad=True)
    s = torch.randn(2, 3, 8, requires_grad=True)
    loss(_taps(torch.zeros(1), blocks={0: s}), _taps(torch.zeros(1), blocks={0: t})).backward()
    assert loss.matrices[0].grad is not None and s.grad is not None and t.grad is None


def test_attention_tap_is_the_attention_sublayer_output():
    """The tap the attention loss reads is attn(norm1(x)): after the projection, before the residual add."""
    row = tiny_row(RowShape(2, 16, 2), classes=3)
    x = torch.randn(2, 3, 16, 16)
    taps = row.forward_taps(x, TapRequest(blocks=(0,), attentions=(0, 1)))
    blk = row.model.blocks[1]
    with torch.no_grad():
        direct = blk.attn(blk.norm1(taps.blocks[0]))
    assert torch.allclose(taps.attentions[1], direct, atol=1e-6)


def test_learngene_distillation_sums_the_three_terms(registry):
    anc, aux = RowShape(4, 16, 2), RowShape(3, 8, 1)
    loss = registry.create("loss", "learngene", anc, aux)
    assert loss.levels == 3
    assert loss.pairs == [(0, 0), (2, 1), (3, 2)]  # round(4/3)=1, round(8/3)=3, 4 against 1, 2, 3
    assert len(loss.block_matrices()) == 3 and len(loss.attention_matrices()) == 3
    teacher = tiny_row(anc, seed=1, classes=3)
    student = tiny_row(aux, seed=2, classes=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        t = teacher.forward_taps(x, loss.teacher_taps())
    s = student.forward_taps(x, loss.student_taps())
    parts = loss.parts(s, t)
    assert set(parts) == {"attention", "block", "prediction"}
    # direct: each term recomputed from the taps
    att = sum(((t.attentions[a] @ m - s.attentions[b]) ** 2).mean() for (a, b), m in zip(loss.pairs, loss.attention_matrices()))
    blk = sum(((t.blocks[a] @ w - s.blocks[b]) ** 2).mean() for (a, b), w in zip(loss.pairs, loss.block_matrices()))
    pred = -(torch.softmax(t.logits, -1) * torch.log_softmax(s.logits, -1)).sum(-1).mean()
    assert loss(s, t).item() == pytest.approx((att + blk + pred).item(), rel=1e-5)
    only = LearngeneDistillation(anc, aux, terms=("prediction",))
    assert list(only.parameters()) == [] and only.teacher_taps() == TapRequest()
    with pytest.raises(ConfigError, match="unknown distillation terms"):
        LearngeneDistillation(anc, aux, terms=("block", "hidden"))


def test_each_loss_is_registered_on_its_own(registry):
    assert {"prediction", "block", "attention", "learngene"} <= set(registry.list("loss"))
    assert registry.provider("loss", "block") == "learngene-pool"
    # create and build agree: the kind's factory (for_models) with the two networks' shapes
    made = registry.create("loss", "block", RowShape(4, 16, 2), RowShape(2, 8, 1), levels=1)
    built = registry.build("loss", "block", RowShape(4, 16, 2), RowShape(2, 8, 1), options={"levels": 1})
    assert isinstance(made, BlockLoss) and made.pairs == built.pairs == [(3, 1)]


# --------------------------------------------------------------------------- designs
def test_pool_design_rows_sorted_and_typed():
    anc = RowShape(12, 768, 12)
    design = PoolDesign("6x768:12,6x192:3")
    assert design.rows(anc) == [RowShape(6, 192, 3), RowShape(6, 768, 12)]
    kinds = [type(d) for d in design.designs(anc)]
    assert kinds == [WidthReduced, DepthReduced]
    assert PoolDesign("9x192:3,9x384:6,9x768:12").rows(anc)[1] == RowShape(9, 384, 6)


def test_design_errors_name_the_problem():
    anc = RowShape(12, 768, 12)
    with pytest.raises(ConfigError, match="depth < 12"):
        DepthReduced(12).rows(anc)
    with pytest.raises(ConfigError, match="width < 768"):
        WidthReduced(6, 1024, 16).rows(anc)
    with pytest.raises(ConfigError, match="needs the ancestry's width"):
        WidthReduced(6, 192, 3, init="ancestry")
    with pytest.raises(ConfigError, match="heads"):
        PoolDesign("6x768:6").rows(anc)
    with pytest.raises(ConfigError, match="unknown auxiliary initialisation"):
        DepthReduced(6, init="copy")


def test_uniform_selection():
    assert uniform_block_selection(12, 6) == [1, 3, 5, 7, 9, 11]
    assert uniform_block_selection(12, 9) == [0, 2, 3, 4, 6, 7, 8, 10, 11]


def test_ancestry_init_copies_stem_head_and_selected_blocks():
    ancestry = tiny_row(RowShape(4, 16, 2), seed=3, classes=3)
    row = TimmViT.from_arch(ancestry.resized(RowShape(2, 16, 2)))
    row.model.eval()
    DepthReduced(2, init="ancestry").initialize(row, ancestry)
    # the copied row computes stem -> ancestry blocks 1 and 3 -> head, written out by hand
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = ancestry.stem()(x)
        h = ancestry.model.blocks[3](ancestry.model.blocks[1](h))
        expected = ancestry.head()(h)
        assert torch.equal(row.model(x), expected)
    narrow = TimmViT.from_arch(ancestry.resized(RowShape(2, 8, 1)))
    with pytest.raises(ConfigError, match="use init 'random'"):
        DepthReduced(2, init="ancestry").initialize(narrow, ancestry)
    before = [p.clone() for p in narrow.model.parameters()]
    PoolDesign("2x8:1,2x16:2", init="ancestry").initialize(narrow, ancestry)  # narrower rows stay random
    assert all(torch.equal(a, b) for a, b in zip(before, narrow.model.parameters()))


# --------------------------------------------------------------------------- paths
def test_paired_stitching_by_hand():
    assert paired_stitching(3) == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 2, 1), (2, 1, 1), (2, 2, 1)]
    assert len(paired_stitching(12)) == 34  # SN-Net's 34 pairs on 11 stitch layers


@pytest.mark.parametrize("depth,count", [(6, 18), (9, 27)])
def test_sliding_window_counts_match_the_paper(depth, count):
    rows = parse_rows(f"{depth}x192:3,{depth}x768:12")
    paths = sliding_window_paths(rows)
    assert len(paths) == count
    # (j, j+1) is sequential (l blocks); (j, j) runs one block twice (l + 1), (j+1, j) two (l + 2)
    assert sorted({p.num_blocks for p in paths}) == [depth, depth + 1, depth + 2]
    assert sum(p.num_blocks == depth for p in paths) == depth + 1
    assert len(LearngenePoolMethod().paths(rows, [])) == depth + 1


def test_every_sliding_window_path_runs_on_three_rows():
    shapes = [RowShape(3, 8, 1), RowShape(3, 12, 2), RowShape(3, 16, 2)]
    rows = [tiny_row(s, seed=i, classes=3) for i, s in enumerate(shapes)]
    pool = Pool.from_method(LearngenePoolMethod(paths="sliding-window"), rows)
    assert len(pool.stitches) == 4  # 2 per adjacent pair, as in sequential stitching
    x = torch.randn(1, 3, 16, 16)
    climbing = 0
    for p in pool.paths:
        for a, b in zip(p.segments, p.segments[1:]):
            assert b.row == a.row + 1
        assert all(len(s) >= 1 for s in p.segments)
        climbing += len(p.segments) == 3
        with torch.no_grad():
            assert pool.descendant(p)(x).shape == (1, 3)
    # three-row paths: pairs (c1, c2) with the middle row running >= 1 block (j2 >= k1), counted by brute force
    pairs = paired_stitching(3)
    assert climbing == sum(1 for a in pairs for b in pairs if b[0] >= a[1])


def test_unknown_path_set_and_unsorted_rows(registry):
    with pytest.raises(ConfigError, match="sliding-window"):
        LearngenePoolMethod(paths="zigzag")
    with pytest.raises(ConfigError, match="sorted by width"):
        LearngenePoolMethod().stitches([RowShape(6, 768, 12), RowShape(6, 192, 3)])
    assert registry.method("learngene-pool-sliding-window").path_set == "sliding-window"


# --------------------------------------------------------------------------- stitch initialisation
def _two_row_pool(widths=(8, 16), depth=3, ancestry_width=16, path_set="sequential"):
    heads = {8: 1, 12: 2, 16: 2}
    rows = [tiny_row(RowShape(depth, w, heads[w]), seed=i, classes=3) for i, w in enumerate(widths)]
    return Pool.from_method(
        LearngenePoolMethod(paths=path_set), rows,
        info={"learngene": {"ancestry": {"depth": 4, "width": ancestry_width, "heads": 2}}},
    )


def test_tm_weight_is_the_mean_w_bias_zero(registry):
    pool = _two_row_pool()
    g = torch.Generator().manual_seed(4)
    ws = [torch.randn(16, 8, generator=g) for _ in range(3)]
    store_matrices(pool.extras, 0, "W", ws)
    assert sorted(pool.extras) == [matrix_key(0, "W", i) for i in range(3)]
    registry.create("initializer", "tm").initialize(pool, InitContext())
    mean = np.mean([w.double().numpy() for w in ws], axis=0)  # (d, d') = (16, 8)
    for name, layer in pool.stitches.items():
        assert tuple(layer.weight.shape) == (16, 8)
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), mean, rtol=1e-5, atol=1e-6)
        assert torch.count_nonzero(layer.bias) == 0
    # the stitch maps a narrow feature x to x @ W.T
    x = torch.randn(5, 8)
    np.testing.assert_allclose(pool.stitches["s0_1_1"](x).detach().numpy(), x.numpy() @ mean.T.astype(np.float32), rtol=1e-4, atol=1e-5)


def test_tm_pinv_weight_is_pinv_transposed(registry):
    pool = _two_row_pool()
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(16, 8, generator=g) for _ in range(3)]
    store_matrices(pool.extras, 0, "W", ws)
    registry.create("initializer", "tm-pinv").initialize(pool, InitContext())
    mean = np.mean([w.double().numpy() for w in ws], axis=0)
    expected = np.linalg.pinv(mean).T  # (16, 8): y = x @ pinv(W)
    for layer in pool.stitches.values():
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), expected, rtol=1e-4, atol=1e-6)
        assert torch.count_nonzero(layer.bias) == 0
    # the point of the pinv: a narrow feature made as x_anc @ W maps back to x_anc when x_anc is in W's column space
    x_anc = torch.randn(4, 8).double() @ torch.from_numpy(mean).T  # (4, 16) in range(W)
    x_narrow = x_anc @ torch.from_numpy(mean)
    back = pool.stitches["s0_1_2"](x_narrow.float()).double()
    assert torch.allclose(back, x_anc, atol=1e-3)


def test_tm_on_three_rows_composes_through_the_ancestry(registry):
    pool = _two_row_pool(widths=(8, 12, 16))
    g = torch.Generator().manual_seed(6)
    w0 = [torch.randn(16, 8, generator=g) for _ in range(3)]
    w1 = [torch.randn(16, 12, generator=g)]
    store_matrices(pool.extras, 0, "W", w0)
    store_matrices(pool.extras, 1, "W", w1)
    a0 = np.mean([w.double().numpy() for w in w0], axis=0)
    a1 = w1[0].double().numpy()
    registry.create("initializer", "tm").initialize(pool, InitContext())
    # x0 -> x_anc = x0 @ A0.T -> x1 = x_anc @ A1: weight (12, 8) = A1.T @ A0
    np.testing.assert_allclose(pool.stitches["s0_1_1"].weight.detach().double().numpy(), a1.T @ a0, rtol=1e-4, atol=1e-4)
    # row 2 is as wide as the ancestry: identity, weight = A1
    np.testing.assert_allclose(pool.stitches["s1_2_2"].weight.detach().double().numpy(), a1, rtol=1e-5, atol=1e-6)
    registry.create("initializer", "tm-pinv").initialize(pool, InitContext())
    np.testing.assert_allclose(
        pool.stitches["s0_1_1"].weight.detach().double().numpy(), (np.linalg.pinv(a0) @ a1).T, rtol=1e-3, atol=1e-4
    )


def test_tm_without_matrices_says_what_to_do(registry):
    pool = _two_row_pool()
    with pytest.raises(ConfigError, match=r"learngene\.row0\.W.*'ls' or 'random'"):
        registry.create("initializer", "tm").initialize(pool, InitContext())
    store_matrices(pool.extras, 0, "W", [torch.zeros(16, 4)])
    with pytest.raises(ConfigError, match="expected"):
        registry.create("initializer", "tm").initialize(pool, InitContext())


def test_store_matrices_replaces_a_rows_old_levels():
    extras = {}
    store_matrices(extras, 0, "W", [torch.ones(4, 2)] * 3)
    store_matrices(extras, 1, "M", [torch.ones(4, 3)])
    store_matrices(extras, 0, "W", [torch.zeros(4, 2)])
    assert sorted(extras) == ["learngene.row0.W.0", "learngene.row1.M.0"]
    assert len(row_matrices(extras, 0)) == 1 and torch.count_nonzero(row_matrices(extras, 0)[0]) == 0


def test_ls_initializer_works_on_a_learngene_pool(registry):
    """SN-Net's LS (registered by the snnet plugin) on a learngene pool: each sequential stitch
    s0_1_k is the least-squares map from narrow block k's output to wide block k's output."""
    pool = _two_row_pool()
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    registry.create("initializer", "ls").initialize(pool, InitContext(images=images))
    with torch.no_grad():
        narrow = pool.adapters[0].forward_taps(images, TapRequest(blocks=(0, 1)))
        wide = pool.adapters[1].forward_taps(images, TapRequest(blocks=(0, 1)))
    for k in (1, 2):
        x = narrow.blocks[k - 1].reshape(-1, 8).double().numpy()
        y = wide.blocks[k - 1].reshape(-1, 16).double().numpy()
        sol = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
        layer = pool.stitches[f"s0_1_{k}"]
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), sol[:-1].T, atol=1e-3)
        np.testing.assert_allclose(layer.bias.detach().double().numpy(), sol[-1], atol=1e-3)


# --------------------------------------------------------------------------- planning
def test_plan_the_papers_designs_without_weights(registry):
    from stitchkit.apps.planner import plan

    for depth in (6, 9):
        result = plan("learngene-pool", ancestry="deit_base_patch16_224", rows=parse_rows(f"{depth}x192:3,{depth}x768:12"), registry=registry)
        assert len(result["descendants"]) == depth + 1
        assert result["stitch_layers"] == depth - 1
        assert result["stitch_params"] == (depth - 1) * (192 * 768 + 768)
        assert result["storage_params"] == sum(r["params"] for r in result["rows"]) + result["stitch_params"]
        sizes = [d["params"] for d in result["descendants"]]
        assert sizes == sorted(sizes) and sizes[0] < 5.7e6  # smaller than DeiT-Tiny
    sw = plan("learngene-pool-sliding-window", ancestry="deit_base_patch16_224", rows=parse_rows("6x192:3,6x768:12"), registry=registry)
    assert len(sw["descendants"]) == 18


# --------------------------------------------------------------------------- configs
from stitchkit_learngene import CONFIGS


@pytest.mark.parametrize("name,rows,distill,finetune", [
    ("learngene_deit_base_l6.toml", "6x192:3,6x768:12", 100, 50),
    ("learngene_deit_base_l9.toml", "9x192:3,9x768:12", 100, 50),
    ("learngene_digits.toml", "3x32:2,3x64:4", 6, 6),
])
def test_shipped_configs_are_valid(name, rows, distill, finetune):
    from stitchkit.engine import TrainConfig, load_config, section
    from stitchkit_learngene.config import LearngeneConfig

    config = load_config(CONFIGS / name)
    assert config["method"] == "learngene-pool"
    lg = section(config, "learngene", LearngeneConfig)
    assert lg.rows == rows and lg.initializer == "tm" and lg.alpha == 0.5
    base = TrainConfig.from_config(config)
    assert lg.train_config(base, "distill").epochs == distill
    assert lg.train_config(base, "finetune").epochs == finetune
    if name.startswith("learngene_deit"):
        assert config["model"]["timm_name"] == "deit_base_patch16_224" and config["model"]["pretrained"]
        assert (base.batch_size, base.lr) == (128, 5e-4)


@pytest.mark.parametrize("depth,descendants", [(6, 18), (9, 27)])
def test_official_recipe_configs_differ_from_the_paper_configs_exactly_as_documented(depth, descendants):
    """The ``_official`` configs against their paper-text twins: every differing key is one of the
    rows of docs/learngene_pool.md's table ("The authors' recipe"), nothing else differs, and
    ``stitchkit cost`` prices them with the sliding-window descendants."""
    from stitchkit.apps.cost import training_cost
    from stitchkit.engine import TrainConfig, load_config, section
    from stitchkit_learngene.config import LearngeneConfig

    paper = load_config(CONFIGS / f"learngene_deit_base_l{depth}.toml")
    official = load_config(CONFIGS / f"learngene_deit_base_l{depth}_official.toml")

    def flat(d, prefix=""):  # noqa: ANN001, ANN202
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "transform" else {f"{prefix}{k}": v})
        return out

    a, b = flat(paper), flat(official)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "description"}
    assert changed == {
        "train.label_smoothing": (0.1, 0.0), "train.mixup": (0.8, 0.0), "train.cutmix": (1.0, 0.0),
        "train.lr_reference_batch": (0, 512), "train.model_ema": (False, True),  # the decay is the default, 0.99996
        "train.min_lr": (1e-6, 1e-5),
        "learngene.paths": ("sequential", "sliding-window"), "learngene.alpha": (0.5, 0.1),
        "learngene.prediction_reduction": (None, "mean"), "learngene.finetune_distillation": (True, False),
        "learngene.design_args.drop_path_rate": (None, 0.1),
        "learngene.finetune.batch_size": (None, 32), "learngene.finetune.lr": (None, 5e-5),
        "learngene.finetune.min_lr": (None, 5e-5), "learngene.finetune.warmup_epochs": (None, 0.0),
        "learngene.finetune.lr_reference_batch": (None, 0),
    }
    assert official["train"]["model_ema_decay"] == 0.99996
    lg = section(official, "learngene", LearngeneConfig)
    base = TrainConfig.from_config(official)
    assert lg.train_config(base, "distill").epochs == 100 and lg.train_config(base, "finetune").epochs == 50
    assert (lg.train_config(base, "finetune").lr_reference_batch, base.lr_reference_batch) == (0, 512)
    result = training_cost(official, train_images=1281167, eval_images=50000, num_classes=1000, alone=True)
    assert len(result["alone"]["descendants"]) == descendants
