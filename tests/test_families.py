"""Families beyond plain ViTs: Swin, ResNet, ConvNeXt, and a family defined only in this file.

SN-Net's configuration sets are checked against the official code
(ziplab/SN-Net ``stitching_swin/models/snnet.py`` and
``stitching_resnet_swin/timm/models/snnet.py``; the parameter counts of
``stitching_swin/results/stitches_res.txt``); parameter and MAC counts
against independent sums, a hand count and ``FlopCounterMode`` / 2.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stitchkit import hookimpl
from stitchkit.families.convnext import TimmConvNeXt
from stitchkit.families.levit import TimmLeViT
from stitchkit.core.errors import ConfigError
from stitchkit.pool.features import collect_stitch_features
from stitchkit.core.interfaces import AncestryAdapter, InitContext
from stitchkit.pool.measure import count_macs, count_params
from stitchkit.apps.planner import plan
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry, default_registry
from stitchkit.families.resnet import TimmResNet
from stitchkit.core.spec import FeatureSignature, Path, RowShape, Segment, StitchSpec, parse_row
from stitchkit.pool.stitch_layers import MapStitch
from stitchkit.io.storage import load_descendant, save_pool
from stitchkit.families.swin import TimmSwin
from stitchkit.testing import check_plugin
from stitchkit.families.vit import TimmViT

SWINS = "swin_tiny_patch4_window7_224,swin_small_patch4_window7_224,swin_base_patch4_window7_224"


def _plan(anchors: str) -> dict[str, Any]:
    return plan("snnet", anchors=anchors.split(","))


# --------------------------------------------------------------------------- SN-Net over the official families
def test_snnet_swin_ti_s_b_is_the_official_configuration_set():
    result = _plan(SWINS)
    d = result["descendants"]
    # stitching_swin: 3 anchors; stage 0 and 1: paired(2) -> 1 config per pair; stage 2: Ti->S unpaired(6, 18) -> 17
    # configs on 6 layers, S->B paired(18) with j < k -> 17 configs on 17 layers; stage 3 not stitched.
    assert len(d) == 3 + 2 + 2 + 17 + 17 == 41
    assert result["stitch_layers"] == 2 + 2 + 6 + 17 == 27
    labels = [x["label"] for x in d]
    assert labels[3:7] == ["0->1 stage 0 (0,1)", "1->2 stage 0 (0,1)", "0->1 stage 1 (0,1)", "1->2 stage 1 (0,1)"]
    # unpaired(6, 18): end block i maps to front block i // 3; pairs (j, i) with j < i, layer = mapping[config number]
    assert labels[7:12] == ["0->1 stage 2 (0,1)", "0->1 stage 2 (0,2)", "0->1 stage 2 (1,3)", "0->1 stage 2 (1,4)", "0->1 stage 2 (1,5)"]
    assert [x["path"]["stitches"][0] for x in d[7:24]] == [f"s0_1_{2 + m}" for m in [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]]
    assert labels[-1] == "1->2 stage 2 (16,17)"
    # the official results file's parameter counts (stitching_swin/results/stitches_res.txt), which leave out
    # the front anchor's patch-merging layers of a stitched Swin
    official = {0: 28288354, 1: 49606258, 2: 87768224, 3: 49615570, 4: 87692407, 5: 49568818, 7: 49383154,
                23: 29841742, 24: 85063014, 40: 63005478}
    assert {i: d[i]["params_published"] for i in official} == official
    # true counts add the merging layers back: Swin-T's stage-1 and stage-2 patch merging
    merge1, merge2 = 2 * 384 + 384 * 192, 2 * 768 + 768 * 384
    assert d[5]["params"] - d[5]["params_published"] == merge1
    assert d[7]["params"] - d[7]["params_published"] == merge1 + merge2


def test_snnet_resnet18_resnet50_and_resnet18_swin_ti_are_the_official_sets():
    r = _plan("resnet18,resnet50")
    # stitching_resnet_swin: stages 1 and 2 only; stage 1 unpaired(2, 4) -> 3 configs on 2 layers,
    # stage 2 unpaired(2, 6) -> 5 configs on 2 layers; 10 lines in results/stitches_res_resnet_18_50.txt
    assert len(r["descendants"]) == 2 + 3 + 5 and r["stitch_layers"] == 4
    assert [x["label"] for x in r["descendants"][2:]] == [
        "0->1 stage 1 (0,1)", "0->1 stage 1 (1,2)", "0->1 stage 1 (1,3)", "0->1 stage 2 (0,1)", "0->1 stage 2 (0,2)",
        "0->1 stage 2 (1,3)", "0->1 stage 2 (1,4)", "0->1 stage 2 (1,5)"]
    # 1x1 convolutions 128 -> 512 (stage 1) and 256 -> 1024 (stage 2): weight + bias
    assert r["stitch_params"] == 2 * (128 * 512 + 512) + 2 * (256 * 1024 + 1024)
    x = _plan("resnet18,swin_tiny_patch4_window7_224")
    # stage 1 paired(2) -> (0,1) on one layer; stage 2 unpaired(2, 6) -> 5 configs on 2 layers; 8 lines in the official file
    assert len(x["descendants"]) == 2 + 1 + 5 and x["stitch_layers"] == 3
    assert x["stitch_params"] == (128 * 192 + 192) + 2 * (256 * 384 + 384)


def test_resnet_to_swin_stitch_is_a_1x1_conv_laid_out_as_the_swin_grid():
    torch.manual_seed(0)
    res = TimmResNet.from_arch(dict(block="basic", layers=[1, 2, 2, 1], channels=[4, 8, 8, 8], stem_width=4,
                                    num_classes=5, img_size=32))
    swin = TimmSwin.from_arch(dict(img_size=32, patch_size=4, embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 2],
                                   window_size=2, num_classes=5, drop_path_rate=0.0))
    pool = Pool.from_method(default_registry().method("snnet"), [res, swin]).eval()
    (name, layer), = [(n, m) for n, m in pool.stitches.items() if n.endswith("_0")]
    assert isinstance(layer, MapStitch) and layer.kernel_size == (1, 1) and layer.out_layout == "nhwc"
    spec = pool.stitch_specs[name]
    assert (spec.src_layout, spec.dst_layout, spec.src_width, spec.dst_width) == ("map", "nhwc", 8, 16)
    path = pool.paths[2]  # stage 1 (0,1): ResNet up to stage-1 block 0, stitch, Swin from stage-1 block 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = res.stem()(x)
        for b in range(path.segments[0].stop):
            h = res.blocks[b](h)
        h = torch.einsum("bchw,oc->bhwo", h, layer.weight[:, :, 0, 0]) + layer.bias  # the conv, by hand, as NHWC
        for b in range(path.segments[1].start, swin.shape.depth):
            h = swin.blocks[b](h)
        torch.testing.assert_close(pool.descendant(path)(x), swin.head()(h), rtol=1e-5, atol=1e-5)


def test_tokens_into_a_cnn_and_unequal_grids_are_config_errors():
    torch.manual_seed(0)
    vit = TimmViT.from_arch({**TimmViT.example().arch(), "embed_dim": 8, "num_heads": 2})
    res = TimmResNet.example()
    spec = StitchSpec("s0_1_0", 0, 1, vit.shape.width, res.signatures()[1].channels)
    path = Path((Segment(0, 0, 1), Segment(1, 1, res.shape.depth)), ("s0_1_0",))
    with pytest.raises(ConfigError, match="never tokens into a CNN"):
        Pool([vit, res], [spec], [path], method="test")
    small = TimmResNet.from_arch({**res.arch(), "img_size": [32, 32]})
    bad = Path((Segment(0, 0, 1), Segment(1, 1, res.shape.depth)), ("s0_1_0",))
    spec = StitchSpec("s0_1_0", 0, 1, res.signatures()[1].channels, res.signatures()[1].channels)
    with pytest.raises(ConfigError, match=r"take different inputs \(channels, height, width\): \(3, 16, 16\) and \(3, 32, 32\)"):
        Pool([res, small], [spec], [bad], method="test")  # a pool has one input (grids: tests/test_compatibility.py)


@pytest.mark.parametrize("cls", [TimmSwin, TimmResNet, TimmConvNeXt, TimmLeViT])
def test_macs_equal_flop_counter_and_params_an_independent_sum(cls):
    torch.manual_seed(0)
    a = cls.example()
    a.model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        a.model(torch.zeros(1, *a.input_size))
    assert count_macs(a) == counter.get_total_flops() // 2
    assert count_params(a.model) == sum(p.numel() for p in a.model.parameters())
    # a descendant of two rows: params = first row's stem and blocks run + stitch + last row's blocks and head
    rows = [cls.from_arch(a.resized(s)) for s in (a.shape, _wider(a.shape))]
    pool = Pool.from_method(default_registry().method("sequential"), rows)
    for path in pool.paths:
        want = 0
        for r, adapter in enumerate(rows):
            for key, t in adapter.model.named_parameters():
                part, index = adapter.part_of(key)
                runs = any(s.row == r and s.start <= (index or 0) < s.stop for s in path.segments)
                if (part == "stem" and r == path.rows[0]) or (part == "head" and r == path.rows[-1]) or (part == "block" and runs):
                    want += t.numel()
        want += sum(pool.stitch_specs[n].src_width * pool.stitch_specs[n].dst_width + pool.stitch_specs[n].dst_width
                    for n in path.stitches)
        d = pool.descendant(path)
        assert count_params(d) == want
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            d.eval()(torch.zeros(1, *a.input_size))
        assert pool.path_macs(path) == count_macs(d) == counter.get_total_flops() // 2


def _wider(shape: RowShape) -> RowShape:
    return RowShape.staged([(d, 2 * w, h) for d, w, h in shape.stage_shapes])


def test_resnet_macs_hand_count():
    torch.manual_seed(0)
    a = TimmResNet.from_arch(dict(block="basic", layers=[1, 1, 1, 1], channels=[2, 2, 2, 2], stem_width=2,
                                  num_classes=3, img_size=32, in_chans=1))
    # stem 7x7/2 conv 1->64 on 16x16 (timm's plain stem is 64 wide whatever stem_width), max-pool -> 8x8;
    # stage 0 at 8x8: 3x3 conv 64->2, 3x3 conv 2->2, 1x1 shortcut 64->2; stages 1..3 at 4, 2, 1:
    # 3x3 stride-2 conv + 3x3 conv + 1x1 stride-2 shortcut, all 2->2; fc 2 -> 3
    stem = 16 * 16 * 64 * 49
    stage0 = 8 * 8 * 2 * 64 * 9 + 8 * 8 * 2 * 2 * 9 + 8 * 8 * 2 * 64
    later = sum(s * s * 2 * 2 * 9 * 2 + s * s * 2 * 2 for s in (4, 2, 1))
    assert count_macs(a) == stem + stage0 + later + 2 * 3


def test_least_squares_fits_per_pixel_into_tokens():
    torch.manual_seed(0)
    res = TimmResNet.from_arch(dict(block="basic", layers=[1, 2, 2, 1], channels=[4, 8, 8, 8], stem_width=4,
                                    num_classes=5, img_size=32))
    swin = TimmSwin.from_arch(dict(img_size=32, patch_size=4, embed_dim=8, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 2],
                                   window_size=2, num_classes=5, drop_path_rate=0.0))
    reg = default_registry()
    pool = Pool.from_method(reg.method("snnet"), [res, swin]).eval()
    images = torch.randn(6, 3, 32, 32)
    reg.create("initializer", "ls").initialize(pool, InitContext(images=images))
    feats = list(collect_stitch_features(pool, images))
    for f in feats:
        assert f.front.shape[:-1] == f.end.shape[:-1]  # same positions, channels last on both sides
    name = "s0_1_0"
    (f,) = [f for f in feats if f.name == name]  # one place: ResNet block 1 output -> Swin block 2 input
    with torch.no_grad():
        h = res.stem()(images)
        for b in range(f.place.front_block):
            h = res.blocks[b](h)
        front = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).double()  # per pixel, by hand
        g = swin.stem()(images)
        for b in range(f.place.end_block):
            g = swin.blocks[b](g)
        end = g.reshape(-1, g.shape[-1]).double()
    sol = torch.linalg.lstsq(torch.cat([front, torch.ones(len(front), 1, dtype=torch.float64)], 1), end).solution
    layer = pool.stitches[name]
    torch.testing.assert_close(layer.weight[:, :, 0, 0].double(), sol[:-1].T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.bias.double(), sol[-1], rtol=1e-4, atol=1e-5)


def test_hierarchical_pool_file_round_trip(tmp_path):
    torch.manual_seed(0)
    rows = [TimmResNet.example(), TimmResNet.from_arch(TimmResNet.example().resized(parse_row("1x4/3x8/1x16/1x16")))]
    pool = Pool.from_method(default_registry().method("snnet"), rows).eval()
    assert {s.src_layout for s in pool.stitch_specs.values()} == {"map"}
    f = save_pool(pool, tmp_path / "pool.safetensors")
    x = torch.randn(2, 3, 16, 16)
    for i in range(len(pool.paths)):
        with torch.no_grad():
            torch.testing.assert_close(load_descendant(f, i).eval()(x), pool.descendant(i)(x), rtol=0, atol=0)


def test_adapters_refuse_what_their_family_cannot_be():
    with pytest.raises(ConfigError, match="doubles its width"):
        TimmSwin.example().resized(parse_row("1x16:2/2x48:4"))
    with pytest.raises(ConfigError, match="no attention heads"):
        TimmResNet.example().resized(parse_row("1x4:1/2x8/1x8/1x16"))
    with pytest.raises(ConfigError, match="four stages"):
        TimmResNet.from_arch({**TimmResNet.example().arch(), "layers": [1, 1], "channels": [4, 8]})
    with pytest.raises(ConfigError, match="no attention"):
        TimmConvNeXt.example().attention(0)
    with pytest.raises(ConfigError, match="not a SwinTransformer"), torch.device("meta"):
        TimmSwin.from_name("resnet18")


# --------------------------------------------------------------------------- a family of the tests' own
class PlainCNN(AncestryAdapter):
    """A plain CNN written in the tests: conv stem, residual 3x3 stages (the first block of a stage halves the
    grid with a strided conv and a 1x1 shortcut), average pooling and a linear head."""

    name = "test-plain-cnn"
    feature_layout = "map"
    NAMED: dict[str, dict[str, Any]] = {
        "plaincnn-s": {"stages": [[1, 4], [2, 8], [1, 8]]},
        "plaincnn-m": {"stages": [[1, 4], [4, 16], [1, 16]]},
    }

    def __init__(self, model: nn.Module, arch: Mapping[str, Any]) -> None:
        super().__init__(model)
        self._arch = dict(arch)

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> PlainCNN:
        unknown = set(arch) - {"stages", "in_chans", "img_size", "num_classes"}
        if unknown:
            raise ConfigError(f"test-plain-cnn: unknown arch keys {sorted(unknown)}")
        full = {"in_chans": 3, "img_size": 16, "num_classes": 5, **arch}
        stages, c = full["stages"], full["in_chans"]
        model = nn.Module()
        model.stem = nn.Sequential(nn.Conv2d(c, stages[0][1], 3, padding=1), nn.ReLU())
        blocks, width = [], stages[0][1]
        for s, (depth, w) in enumerate(stages):
            for b in range(depth):
                blocks.append(_Residual(width, w, stride=2 if s and not b else 1))
                width = w
        model.blocks = nn.ModuleList(blocks)
        model.head = nn.Linear(width, full["num_classes"])
        model.forward = types.MethodType(_plain_forward, model)
        return cls(model, full)

    @classmethod
    def example(cls, **context: Any) -> PlainCNN:
        """Stages of 1, 2, 1 blocks at widths 4, 8, 8 on 16x16 RGB images, 5 classes."""
        return cls.from_arch(cls.NAMED["plaincnn-s"])

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | None = None, **kwargs: Any) -> PlainCNN:
        if name not in cls.NAMED:
            raise ConfigError(f"test-plain-cnn has no model {name!r} (it has {sorted(cls.NAMED)})")
        return cls.from_arch({**cls.NAMED[name], **kwargs})

    def arch(self) -> dict[str, Any]:
        return {k: (list(map(list, v)) if k == "stages" else v) for k, v in self._arch.items()}

    def resized(self, shape: RowShape) -> dict[str, Any]:
        if any(h for _, _, h in shape.stage_shapes):
            raise ConfigError(f"test-plain-cnn rows have no heads, got {shape}")
        return {**self.arch(), "stages": [[d, w] for d, w, _ in shape.stage_shapes]}

    @property
    def shape(self) -> RowShape:
        return RowShape.staged([(d, w, 0) for d, w in self._arch["stages"]])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self._arch["in_chans"], self._arch["img_size"], self._arch["img_size"])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def stem(self) -> nn.Module:
        holder = nn.Module()
        holder.stem = self.model.stem
        holder.forward = lambda x: holder.stem(x)
        return holder

    def head(self) -> nn.Module:
        holder = nn.Module()
        holder.head = self.model.head
        holder.forward = lambda x: holder.head(x.mean((2, 3)))
        return holder

    def attention(self, index: int) -> nn.Module:
        raise ConfigError("test-plain-cnn has no attention")

    def part_of(self, param_name: str) -> tuple[str, int | None]:
        top, rest = param_name.split(".", 1)
        if top == "blocks":
            return "block", int(rest.split(".", 1)[0])
        return ("stem" if top == "stem" else "head"), None


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.short = nn.Conv2d(cin, cout, 1, stride=stride) if (cin, stride) != (cout, 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + self.short(x)


def _plain_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = self.stem(x)
    for blk in self.blocks:
        x = blk(x)
    return self.head(x.mean((2, 3)))


class _PlainCNNPlugin:
    @staticmethod
    @hookimpl
    def register_ancestries(register):  # noqa: ANN001, ANN205
        register(PlainCNN)

    @staticmethod
    @hookimpl
    def ancestry_for_model(name):  # noqa: ANN001, ANN205
        return PlainCNN.name if name.startswith("plaincnn-") else None


@pytest.fixture()
def plain_registry() -> Registry:
    reg = Registry(load_entrypoints=True)
    reg.register_plugin(_PlainCNNPlugin, name="plain-cnn-tests")
    return reg


def test_a_family_of_the_tests_own_passes_the_conformance_suite():
    checks = check_plugin(_PlainCNNPlugin, name="plain-cnn")
    assert "input size and signatures" in checks["ancestry:test-plain-cnn"]


def test_a_family_of_the_tests_own_plans_and_builds(plain_registry, tmp_path):
    a = PlainCNN.example()
    assert [str(s) for s in a.signatures()] == ["map16x16@4", "map16x16@4", "map8x8@8", "map8x8@8", "map4x4@8"]
    result = plan("snnet", anchors=["plaincnn-s", "plaincnn-m"], adapter="auto", registry=plain_registry)
    # a CNN: only the middle stage is stitched; unpaired(2, 4) -> (0,1), (1,2), (1,3) on 2 layers (8 -> 16 channels)
    assert [d["label"] for d in result["descendants"]] == [
        "anchor 0", "anchor 1", "0->1 stage 1 (0,1)", "0->1 stage 1 (1,2)", "0->1 stage 1 (1,3)"]
    assert result["stitch_params"] == 2 * (8 * 16 + 16)
    torch.manual_seed(0)
    rows = [PlainCNN.from_name("plaincnn-s"), PlainCNN.from_name("plaincnn-m")]
    pool = Pool.from_method(plain_registry.method("snnet"), rows).eval()
    plain_registry.create("initializer", "ls").initialize(pool, InitContext(images=torch.randn(4, 3, 16, 16)))
    f = save_pool(pool, tmp_path / "plain.safetensors")
    x = torch.randn(2, 3, 16, 16)
    for i, d in enumerate(result["descendants"]):
        desc = pool.descendant(i)
        assert (count_params(desc), pool.path_macs(pool.paths[i])) == (d["params"], d["macs"])
        with torch.no_grad():
            torch.testing.assert_close(load_descendant(f, i, plain_registry).eval()(x), desc(x), rtol=0, atol=0)


def test_signature_text_and_validation():
    sig = FeatureSignature("map", 64, (56, 56))
    assert (str(sig), sig.positions, sig.tensor_shape()) == ("map56x56@64", 3136, (64, 56, 56))
    assert FeatureSignature.of("nhwc", (7, 7, 768)) == FeatureSignature("nhwc", 768, (7, 7))
    with pytest.raises(ConfigError, match="needs 1 positive"):
        FeatureSignature("tokens", 8, (4, 4))


# --------------------------------------------------------------------------- Learngene Pool over a CNN ancestry
def test_learngene_over_a_resnet_ancestry():
    from stitchkit_learngene.designs import PoolDesign
    from stitchkit_learngene.losses import BlockLoss, LearngeneDistillation

    torch.manual_seed(0)
    anc = TimmResNet.from_arch(dict(block="basic", layers=[2, 2, 2, 2], channels=[8, 16, 16, 32], num_classes=5, img_size=32))
    design = PoolDesign("1x4/1x8/1x8/1x16,1x8/1x16/1x16/1x32")
    shapes = design.rows(anc.shape)
    assert [str(s) for s in shapes] == ["1x4/1x8/1x8/1x16", "1x8/1x16/1x16/1x32"]
    with pytest.raises(ConfigError, match="attention-level distillation loss needs attention"):
        LearngeneDistillation(anc.shape, shapes[0], layout="map")
    loss = LearngeneDistillation(anc.shape, shapes[0], terms=("block", "prediction"), layout="map")
    block = loss.losses["block"]
    assert isinstance(block, BlockLoss)
    # one level per stage, at each stage's last block; W per level on the channels: (8, 4), (16, 8), (16, 8), (32, 16)
    assert block.pairs == [(1, 0), (3, 1), (5, 2), (7, 3)]
    assert [tuple(m.shape) for m in block.matrices] == [(8, 4), (16, 8), (16, 8), (32, 16)]
    row = TimmResNet.from_arch(anc.resized(shapes[0]))
    x = torch.randn(2, 3, 32, 32)
    t, s = anc.forward_taps(x, loss.teacher_taps()), row.forward_taps(x, loss.student_taps())
    want = sum(
        torch.nn.functional.mse_loss(torch.einsum("bchw,cd->bdhw", t.blocks[a], w), s.blocks[b])
        for (a, b), w in zip(block.pairs, block.matrices)
    )
    torch.testing.assert_close(block(s, t), want)
    # the same-width row compares at the last block only, with identity transforms
    same = LearngeneDistillation(anc.shape, shapes[1], terms=("block",), layout="map").losses["block"]
    assert same.pairs == [(7, 3)] and not same.learned


def test_swin_pool_file_round_trip_restores_non_persistent_buffers(tmp_path):
    """timm's Swin keeps its relative position index and window masks out of the state dict; lazy loading
    rebuilds them through TimmSwin.restore_buffers."""
    torch.manual_seed(0)
    small = TimmSwin.example()
    rows = [small, TimmSwin.from_arch(small.resized(parse_row("1x32:2/2x64:4")))]
    pool = Pool.from_method(default_registry().method("sequential"), rows).eval()
    f = save_pool(pool, tmp_path / "swin.safetensors")
    x = torch.randn(2, 3, 16, 16)
    for i in range(len(pool.paths)):
        with torch.no_grad():
            torch.testing.assert_close(load_descendant(f, i).eval()(x), pool.descendant(i)(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "extra",
    [{}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 4}, {"no_embed_class": True}],
    ids=["cls", "no-cls", "registers", "no-embed-class"],
)
def test_vit_signatures_without_a_forward_pass_equal_the_measured_ones(extra: dict) -> None:
    """timm-vit reads its signatures off the model; the base class measures them with a meta forward."""
    from stitchkit.core.interfaces import AncestryAdapter
    from stitchkit.families.vit import TimmViT

    arch = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=3, num_heads=4, **extra)
    vit = TimmViT.from_arch(arch)
    measured = AncestryAdapter.signatures(TimmViT.from_arch(arch))
    assert vit.signatures() == measured
    assert [str(s) for s in measured][0] == f"tokens{16 + (0 if extra.get('class_token') is False else 1) + extra.get('reg_tokens', 0)}@32"
