"""The timm-levit family: the official SN-Net LeViT-192 -> LeViT-256 set (ziplab/SN-Net ``stitching_levit``),
true heads in the core's row shapes, attention MACs, the attention-bias buffers through a pool file, and
each family's own head rule where the core has none."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from torch import nn

from stitchkit.apps.planner import plan
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import InitContext, TapRequest
from stitchkit.core.registry import default_registry
from stitchkit.core.spec import RowShape, parse_row, parse_rows
from stitchkit.families.levit import TimmLeViT
from stitchkit.families.swin import TimmSwin
from stitchkit.families.vit import TimmViT
from stitchkit.io.storage import load_descendant, save_pool
from stitchkit.pool.measure import count_macs
from stitchkit.pool.pool import Pool

#: stitching_levit/results/stitches_res.txt: fvcore FLOPs of the 8 configurations, in config order.
OFFICIAL_FLOPS = [661663808, 1133412864, 1020918272, 977741824, 934565376, 812300576, 791247040, 770193504]


def official_levit_configs(depths_front: list[int], depths_end: list[int]) -> list[tuple[int, int, int]]:
    """``(stage, j, k)`` as stitching_levit does, written out independently: stages 0 and 1 only
    (``for i in range(3): if i == 2: break``), and for equal depths utils.paired_stitching with a
    window of 2 sliding by 1, keeping the pairs with j < k."""
    out = []
    for stage in range(2):
        assert depths_front[stage] == depths_end[stage]  # LeViT-192/256: 4, 4, 4
        blocks = list(range(depths_front[stage]))
        seen: list[tuple[int, int]] = []
        for i in range(len(blocks)):
            window = blocks[i:i + 2]
            for j in window:
                for k in window:
                    if j < k and (j, k) not in seen:
                        seen.append((j, k))
        out += [(stage, j, k) for j, k in seen]
    return out


@pytest.fixture(scope="module")
def levit_plan():
    return plan("snnet", anchors=["levit_192", "levit_256"])


def test_snnet_levit_192_256_is_the_official_configuration_set(levit_plan):
    d = levit_plan["descendants"]
    configs = official_levit_configs([4, 4, 4], [4, 4, 4])
    assert len(configs) == 6 and len(d) == 2 + 6 == 8  # 8 lines in the official results file
    assert levit_plan["stitch_layers"] == 6  # one Linear per (stage, window): 3 + 3
    # the true heads: LeViT-192's 288-wide stage has 5 heads of key size 32
    assert [r["shape"] for r in levit_plan["rows"]] == ["4x192:3/4x288:5/4x384:6", "4x256:4/4x384:6/4x512:8"]
    assert [x["label"] for x in d] == ["anchor 0", "anchor 1"] + [f"0->1 stage {s} ({j},{k})" for s, j, k in configs]
    # front runs stage s up to block j (blocks numbered across stages, 4 per stage), the end resumes at block k
    for x, (s, j, k) in zip(d[2:], configs):
        assert x["path"]["segments"] == [[0, 0, 4 * s + j + 1], [1, 4 * s + k, 12]]
    # Linear stitches 192 -> 256 (stage 0) and 288 -> 384 (stage 1): weight + bias
    assert levit_plan["stitch_params"] == 3 * (192 * 256 + 256) + 3 * (288 * 384 + 384)


def _timm_params(model: nn.Module, prefixes: tuple[str, ...]) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


def test_levit_params_equal_timms_own_models(levit_plan):
    with torch.device("meta"):
        front, end = timm.create_model("levit_192"), timm.create_model("levit_256")
    d = levit_plan["descendants"]
    assert d[0]["params"] == sum(p.numel() for p in front.parameters()) == 10_947_069
    assert d[1]["params"] == sum(p.numel() for p in end.parameters())
    widths = {0: (192, 256), 1: (288, 384)}
    for x, (s, j, k) in zip(d[2:], official_levit_configs([4, 4, 4], [4, 4, 4])):
        # by timm's module tree: the front's stem, earlier stages, stage s's downsampling and blocks 0..j;
        # the end's blocks k.., later stages and both classifiers; the stitch Linear between them
        runs_front = ("stem.", *(f"stages.{t}." for t in range(s)), f"stages.{s}.downsample.",
                      *(f"stages.{s}.blocks.{b}." for b in range(j + 1)))
        runs_end = (*(f"stages.{s}.blocks.{b}." for b in range(k, 4)), *(f"stages.{t}." for t in range(s + 1, 3)),
                    "head.", "head_dist.")
        wf, we = widths[s]
        assert x["params"] == _timm_params(front, runs_front) + wf * we + we + _timm_params(end, runs_end)
        assert x["params_published"] == x["params"]  # nothing left out: the official code reports FLOPs only


def test_levit_macs_reproduce_the_official_flops(levit_plan):
    """fvcore (the official measurement) counts what stitchkit does (linear, conv and the two attention
    matmuls) plus 2 per element entering an affine batch norm; adding that gives the official FLOPs exactly."""
    rows = []
    with torch.device("meta"):
        rows = [TimmLeViT.from_name(n) for n in ("levit_192", "levit_256")]
        pool = Pool.from_method(default_registry().method("snnet"), rows).eval()
    for i, (x, path) in enumerate(zip(levit_plan["descendants"], pool.paths)):
        desc = pool.descendant(path).eval()
        norm = 0

        def count(m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            nonlocal norm
            norm += 2 * inputs[0].numel()

        hooks = [m.register_forward_hook(count) for m in desc.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        with torch.no_grad():
            desc(torch.zeros(1, 3, 224, 224, device="meta"))
        for h in hooks:
            h.remove()
        assert x["macs"] + norm == OFFICIAL_FLOPS[i], (i, x["label"])


def test_levit_attention_macs_hand_count():
    with torch.device("meta"):
        a = TimmLeViT.from_name("levit_192")
    # q @ k^T and attn @ v: queries * keys * heads * (key_dim 32 + value dim 64 in blocks, 128 in the downsamplings);
    # grids 14x14, 7x7, 4x4; a downsampling attention has 192 // 32 = 6 and 288 // 32 = 9 heads
    blocks = 4 * (196 * 196 * 3 * 96) + 4 * (49 * 49 * 5 * 96) + 4 * (16 * 16 * 6 * 96)
    downsampling = 49 * 196 * 6 * 160 + 16 * 49 * 9 * 160
    assert count_macs(a) - count_macs(a.model, a.input_size) == blocks + downsampling


def test_levit_pool_file_round_trip_restores_the_attention_bias_indices(tmp_path):
    torch.manual_seed(0)
    small = TimmLeViT.example()
    rows = [small, TimmLeViT.from_arch(small.resized(parse_row("1x32:3/2x40:7")))]
    for r in rows:  # timm starts attention biases at zero; make the index tables matter
        for name, p in r.model.named_parameters():
            if name.endswith("attention_biases"):
                nn.init.normal_(p)
    pool = Pool.from_method(default_registry().method("sequential"), rows).eval()
    f = save_pool(pool, tmp_path / "levit.safetensors")
    x = torch.randn(2, 3, 64, 64)
    for i in range(len(pool.paths)):
        with torch.no_grad():
            torch.testing.assert_close(load_descendant(f, i).eval()(x), pool.descendant(i)(x), rtol=0, atol=0)


def test_levit_attention_biases_follow_the_weights_in_eval_mode_and_copy():
    """timm caches gathered attention biases in eval mode; the adapter's attentions gather them on every call, so
    an eval-mode network sees new weights, back-propagates twice and deep-copies after a forward with gradients."""
    torch.manual_seed(0)
    a, b = TimmLeViT.example(), TimmLeViT.example()
    for name, p in b.model.named_parameters():
        if name.endswith("attention_biases"):
            nn.init.normal_(p)
    a.model.eval(), b.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a.model(x)
        a.model.load_state_dict(b.model.state_dict())  # in eval mode, no mode switch or .to() in between
        assert torch.equal(a.model(x), b.model(x))
    for _ in range(2):
        a.model(x).sum().backward()  # timm's cache would hold one graph across both passes
    twin = copy.deepcopy(a)  # timm's cache would hold a non-leaf tensor here
    assert pickle.dumps(a.model)  # the cache-free attentions are module-level classes: the network still pickles
    with torch.no_grad():
        assert torch.equal(twin.model(x), a.model(x))
    grads = [p.grad for n, p in a.model.named_parameters() if n.endswith("attention_biases")]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_residual_bn_init_starts_the_residual_branches_active_and_round_trips():
    with torch.device("meta"):
        levit = TimmLeViT.from_name("levit_192")
    assert "residual_bn_init" not in levit.arch()  # timm's init: the branches start as identity
    torch.manual_seed(0)
    fresh = TimmLeViT.from_arch({k: v for k, v in TimmLeViT.example().arch().items() if k != "residual_bn_init"})
    ex = TimmLeViT.example()
    assert ex.arch()["residual_bn_init"] == 1.0 and TimmLeViT.from_arch(ex.arch()).arch() == ex.arch()
    closing = [n for n, _ in ex.model.named_parameters() if n.endswith(("attn.proj.ln.bn.weight", "mlp.ln2.bn.weight"))]
    # one block in stage 0, two in stage 1 (attention + MLP each), and the MLP of stage 1's downsampling
    assert len(closing) == 3 * 2 + 1
    state, fresh_state = ex.model.state_dict(), fresh.model.state_dict()
    assert all(bool((state[n] == 1).all()) and bool((fresh_state[n] == 0).all()) for n in closing)
    x = torch.randn(2, 3, 64, 64)
    fresh.model.eval()
    with torch.no_grad():
        taps = fresh.forward_taps(x, TapRequest(attentions=(0, 1, 2)))
    assert all(bool((t == 0).all()) for t in taps.attentions.values())  # why the example starts at 1
    with pytest.raises(ConfigError, match="residual_bn_init must be a number"):
        TimmLeViT.from_arch({**ex.arch(), "residual_bn_init": "1"})


# --------------------------------------------------------------------------- no head rule in the core
def test_the_core_keeps_heads_as_data():
    levit = parse_rows("4x192:3/4x288:5/4x384:6")[0]
    assert levit.stage_shapes == ((4, 192, 3), (4, 288, 5), (4, 384, 6)) and str(levit) == "4x192:3/4x288:5/4x384:6"
    assert RowShape(6, 190, 3).heads == 3  # the core has no head_dim rule; a family that has one refuses it
    with pytest.raises(ConfigError, match="must be positive"):
        RowShape(6, 190, -1)


def test_vit_and_swin_check_their_own_head_dim_rule():
    with pytest.raises(ConfigError, match=r"timm-vit row 6x190:3: width 190 is not divisible by its 3 heads; a ViT splits"):
        TimmViT.example().resized(parse_row("6x190:3"))
    with pytest.raises(ConfigError, match=r"timm-vit arch .*width 30 is not divisible by its 4 heads"):
        TimmViT.from_arch({**TimmViT.example().arch(), "embed_dim": 30})
    with pytest.raises(ConfigError, match=r"timm-swin row .*stage 1 is 32 wide with 3 heads; a Swin stage splits"):
        TimmSwin.example().resized(parse_row("1x16:2/2x32:3"))
    with pytest.raises(ConfigError, match=r"timm-swin arch .*stage 0 is 16 wide with 3 heads"):
        TimmSwin.from_arch({**TimmSwin.example().arch(), "num_heads": [3, 4]})
    # LeViT has no such rule: a 40-wide stage with 7 heads of key size 4 builds and says so
    a = TimmLeViT.from_arch(TimmLeViT.example().resized(parse_row("1x16:2/2x40:7")))
    assert a.shape == parse_row("1x16:2/2x40:7")
    assert a.model.stages[1].blocks[0].attn.qkv.linear.out_features == 7 * (4 + 4 + 8)


def test_levit_refuses_what_it_cannot_be():
    with pytest.raises(ConfigError, match="attention heads in every stage"):
        TimmLeViT.example().resized(parse_row("1x16/2x24:5"))
    with pytest.raises(ConfigError, match="the 16x stem needs >= 8 channels"):
        TimmLeViT.example().resized(parse_row("1x4:1/2x24:5"))
    with pytest.raises(ConfigError, match="stage 0 is 8 wide, below key_dim 16"):
        TimmLeViT.from_arch({**TimmLeViT.example().arch(), "embed_dim": [8, 24], "key_dim": 16})
    with pytest.raises(ConfigError, match="not a multiple of the stem's stride 16"):
        TimmLeViT.from_arch({**TimmLeViT.example().arch(), "img_size": [60, 60]})
    with pytest.raises(ConfigError, match="not the levit_conv_"), torch.device("meta"):
        TimmLeViT.from_name("levit_conv_192")
    with pytest.raises(ConfigError, match="not a Levit"), torch.device("meta"):
        TimmLeViT.from_name("resnet18")
    with pytest.raises(ConfigError, match=r"arch keys \['use_conv'\]: unknown"):
        TimmLeViT.from_arch({**TimmLeViT.example().arch(), "use_conv": True})


def test_ls_fits_levit_stitches_per_token_where_the_official_code_does():
    torch.manual_seed(0)
    arch = dict(img_size=32, num_classes=5, key_dim=8, depth=[2, 2, 2], stem_type="s8")
    front = TimmLeViT.from_arch({**arch, "embed_dim": [16, 24, 32], "num_heads": [2, 3, 5]})
    end = TimmLeViT.from_arch({**arch, "embed_dim": [32, 48, 64], "num_heads": [4, 6, 8]})
    reg = default_registry()
    pool = Pool.from_method(reg.method("snnet"), [front, end]).eval()
    # stages 0 and 1 stitched, (0,1) in each: front through stage-s block 0, end from stage-s block 1
    assert [p.name for p in pool.paths[2:]] == ["r0[0:1]+s0_1_0+r1[1:6]", "r0[0:3]+s0_1_1+r1[3:6]"]
    images = torch.randn(40, 3, 32, 32)
    # the exact solve: random LeViT features are nearly rank-deficient, where the default official cut-off differs
    reg.create("initializer", "ls", solver="exact").initialize(pool, InitContext(images=images))
    for name, front_stop, end_start, tokens in (("s0_1_0", 1, 1, 16), ("s0_1_1", 3, 3, 4)):
        with torch.no_grad():
            h = front.stem()(images)
            for b in range(front_stop):
                h = front.blocks[b](h)
            g = end.stem()(images)
            for b in range(end_start):
                g = end.blocks[b](g)
        assert h.shape[1] == g.shape[1] == tokens  # the same grid on both sides (4x4 in stage 0, 2x2 in stage 1)
        x, y = h.reshape(-1, h.shape[-1]).double(), g.reshape(-1, g.shape[-1]).double()
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1), y).solution
        layer = pool.stitches[name]
        assert isinstance(layer, nn.Linear)
        torch.testing.assert_close(layer.weight.double(), sol[:-1].T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.bias.double(), sol[-1], rtol=1e-4, atol=1e-5)


def _levit_file(path, **kwargs) -> dict[str, torch.Tensor]:
    """A levit_128s state dict with random weights (attention biases too), saved as a safetensors file."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("levit_128s", **kwargs)
    for name, p in model.named_parameters():
        if name.endswith("attention_biases"):
            nn.init.normal_(p)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return state


def test_an_imagenet_levit_file_starts_a_32px_10_class_grey_levit(tmp_path):
    """224 px, 1000 classes, RGB -> 32 px, 10 classes, grey: timm resets the classifiers and adapts the first
    convolution; the adapter crops each attention-bias table to the offsets the smaller grid has."""
    file = _levit_file(tmp_path / "levit.safetensors")
    a = TimmLeViT.from_name("levit_128s", checkpoint=tmp_path / "levit.safetensors", num_classes=10, in_chans=1, img_size=32)
    assert (a.num_classes, a.input_size) == (10, (1, 32, 32))
    got = a.model.state_dict()
    # token grids at 224 px: 14, 7, 4 (stem stride 16, then halved rounding up); at 32 px: 2, 1, 1. A downsampling
    # attention's keys are on the grid of the stage before it.
    grids = {"stages.0.blocks.": (14, 2), "stages.1.downsample.": (14, 2), "stages.1.blocks.": (7, 1),
             "stages.2.downsample.": (7, 1), "stages.2.blocks.": (4, 1)}
    tables = [k for k in file if k.endswith("attention_biases")]
    assert len(tables) == 2 + 3 + 4 + 2
    for key in tables:
        (old, new), = [g for prefix, g in grids.items() if key.startswith(prefix)]
        heads = file[key].shape[0]
        assert torch.equal(got[key], file[key].reshape(heads, old, old)[:, :new, :new].reshape(heads, new * new)), key
    own = {"stem.conv1.linear.weight", *(f"{h}.linear.{p}" for h in ("head", "head_dist") for p in ("weight", "bias"))}
    kept = [k for k in file if k not in own and k not in tables]
    assert all(torch.equal(got[k], file[k]) for k in kept)
    assert got["stem.conv1.linear.weight"].shape == (16, 1, 3, 3) and got["head.linear.weight"].shape == (10, 384)
    record = a.weights_record
    assert record["from"]["img_size"] == [224, 224] and record["to"]["img_size"] == [32, 32]
    assert record["resized"]["stages.0.blocks.0.attn.attention_biases"] == {"file": [4, 196], "model": [4, 4]}
    assert "attention biases fitted to the new token grids by offset (11 tables, stage 0: 14x14 -> 2x2)" in record["adapted"]
    with torch.no_grad():
        assert a.model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_a_larger_grid_gives_new_offsets_the_farthest_trained_bias(tmp_path):
    file = _levit_file(tmp_path / "small.safetensors", img_size=32, num_classes=10)
    a = TimmLeViT.from_name("levit_128s", checkpoint=tmp_path / "small.safetensors", num_classes=10, img_size=64)
    old = file["stages.0.blocks.0.attn.attention_biases"].reshape(4, 2, 2)
    new = a.model.state_dict()["stages.0.blocks.0.attn.attention_biases"].reshape(4, 4, 4)
    assert torch.equal(new[:, :2, :2], old)  # the offsets both grids have keep their biases
    assert torch.equal(new[:, 3, 3], old[:, 1, 1]) and torch.equal(new[:, 0, 3], old[:, 0, 1])  # edge padding
    assert a.weights_record["from"]["img_size"] == [32, 32]
