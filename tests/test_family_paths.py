"""One path for every family (issue 22 items 3, 4, 8): the model name -> adapter hook, stochastic depth kept
by ViT rows, and, per family (Swin, ResNet, ConvNeXt, LeViT), starting weights from a 1000-class checkpoint, the ``--timm --onnx`` export
rebuilt through the recorded adapter, and a teacher of the family's own with taps.

The networks are timm's own tiny test models (``test_vit``, ``test_resnet``, ``test_convnext``) and a Swin-T
shrunk by keyword (timm has no test Swin); every checkpoint is written by the test from random weights.
"""

from __future__ import annotations

import types

import pytest
import torch

import stitchkit
from stitchkit.core.errors import ConfigError, PluginError
from stitchkit.core.interfaces import AncestryAdapter
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(load_entrypoints=False)


# --------------------------------------------------------------------------- the model name -> adapter hook
@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("deit_tiny_patch16_224", "timm-vit"), ("vit_base_patch16_224", "timm-vit"), ("deit3_small_patch16_224", "timm-vit"),
        ("swin_tiny_patch4_window7_224", "timm-swin"), ("resnet18", "timm-resnet"), ("seresnet50", "timm-resnet"),
        ("convnext_tiny", "timm-convnext"), ("test_convnext", "timm-convnext"), ("levit_192", "timm-levit"),
        ("deit_small_patch16_224.fb_in1k", "timm-vit"), ("hf-hub:timm/resnet18.a1_in1k", "timm-resnet"),  # tags, timm's Hub
    ],
)
def test_the_core_adapters_answer_for_their_timm_models(registry, name, adapter):
    assert registry.ancestry_for(name) == adapter


def test_a_resnet_mixing_block_types_is_refused_naming_them(registry):
    with pytest.raises(ConfigError, match=r"timm-resnet takes one block type in every stage, got a mix of \['BasicBlock', 'Bottleneck'\]"):
        registry.ancestry("timm-resnet").from_name("test_resnet")  # timm's test model: a bottleneck in stage 3


def test_a_model_no_adapter_answers_for_is_one_line_naming_it(registry):
    for name in ("efficientnet_b0", "not_a_model"):  # a timm family without an adapter; a typo
        with pytest.raises(ConfigError, match=rf"^no ancestry adapter recognises the model '{name}' \(adapters: [^\n]*--adapter"):
            registry.ancestry_for(name)


class _Other(AncestryAdapter):
    """A second adapter that claims ViTs (only its name and the hook matter here)."""

    name = "other-vit"
    from_arch = arch = resized = stem = head = attention = part_of = None  # type: ignore[assignment]
    shape = input_size = blocks = None  # type: ignore[assignment]


def _plugin(answer):
    mod = types.ModuleType("claims")
    mod.register_ancestries = stitchkit.hookimpl(lambda register: register(_Other))  # type: ignore[attr-defined]
    mod.register_ancestries.__name__ = "register_ancestries"

    def ancestry_for_model(name):
        return answer(name)

    mod.ancestry_for_model = stitchkit.hookimpl(ancestry_for_model)  # type: ignore[attr-defined]
    return mod


def test_a_plugin_adapter_answers_the_hook_and_a_double_claim_names_both():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: "other-vit" if n.startswith(("my_vit", "deit_")) else None), name="claims")
    assert reg.ancestry_for("my_vit_small") == "other-vit"
    assert reg.ancestry_for("resnet18") == "timm-resnet"  # the core still answers for the rest
    with pytest.raises(ConfigError, match=r"several ancestry adapters claim the model 'deit_tiny_patch16_224': "
                                          r"other-vit \(plugin claims\); timm-vit \(plugin stitchkit\); name the adapter"):
        reg.ancestry_for("deit_tiny_patch16_224")


def test_a_plugin_answering_with_an_unregistered_adapter_is_a_plugin_error():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: "timm-vti"), name="typo")
    with pytest.raises(PluginError, match=r"plugin 'typo' answered ancestry_for_model\('resnet18'\) with 'timm-vti', which is no registered"):
        reg.ancestry_for("resnet18")


def test_plan_chooses_the_adapter_through_the_hook():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(_plugin(lambda n: None), name="silent")
    from stitchkit.apps.planner import plan

    rows = plan("sequential", ancestry="test_convnext", rows=[RowShape.staged([(1, 24, 0), (1, 32, 0), (1, 48, 0), (1, 64, 0)])],
                registry=reg, model_kwargs={"img_size": 32})["rows"]
    assert [r["adapter"] for r in rows] == ["timm-convnext"]


# --------------------------------------------------------------------------- item 8: stochastic depth in ViT rows
def test_vit_rows_keep_drop_path_rate_through_arch_and_resized(registry):
    cls = registry.ancestry("timm-vit")
    vit = cls.from_arch(dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=4, drop_path_rate=0.1))
    assert vit.arch()["drop_path_rate"] == 0.1
    row = cls.from_arch(vit.resized(RowShape(6, 16, 2)))
    probs = [float(getattr(b.drop_path1, "drop_prob", 0.0)) for b in row.model.blocks]  # timm: linear from 0 to the rate over the depth
    assert probs == pytest.approx([0.1 * i / 5 for i in range(6)]) and row.arch()["drop_path_rate"] == 0.1
    plain = cls.from_arch(dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=4, num_heads=4))
    assert "drop_path_rate" not in plain.arch()  # no stochastic depth: the arch is as before


# --------------------------------------------------------------------------- per family: weights, export, teacher
#: family -> (timm name, the narrow anchor's and the wide anchor's keyword overrides (the teacher takes none:
#: ``timm:NAME`` is the named model), the teacher's image-size keyword).
FAMILIES = {
    "timm-swin": ("swin_tiny_patch4_window7_224",
                  [dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4),
                   dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)], True),
    "timm-resnet": ("resnet18", [dict(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8),
                                 dict(layers=(1, 1, 1, 1), channels=(16, 24, 32, 48), stem_width=8)], False),
    "timm-convnext": ("test_convnext", [dict(dims=(16, 24, 32, 48)), {}], False),
    "timm-levit": ("levit_128s", [dict(embed_dim=(16, 24, 32), key_dim=8, depth=(1, 1, 1), num_heads=(2, 3, 4)),
                                  dict(embed_dim=(32, 48, 64), key_dim=8, depth=(1, 1, 1), num_heads=(4, 6, 8))], True),
}


@pytest.fixture(scope="module")
def full_registry() -> Registry:
    return Registry(load_entrypoints=True)  # the method plugins (snnet) and the learngene losses


@pytest.fixture(scope="module")
def digits():
    from stitchkit.engine import DataConfig, build_data

    return build_data(DataConfig(source="digits", img_size=32, in_chans=1))


def _imagenet_file(path, name: str, overrides: dict) -> dict[str, torch.Tensor]:
    """A 1000-class, RGB, 224 px checkpoint of ``name`` (random weights), as timm would ship one."""
    import timm
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in timm.create_model(name, **overrides).state_dict().items()}
    save_file(state, str(path))
    return state


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_pool_of_each_family_starts_from_imagenet_files_exports_and_distils_from_its_own_family(
    family, full_registry, digits, tmp_path, capsys
):
    import timm
    from safetensors import safe_open

    from stitchkit.cli.main import main
    from stitchkit.core.interfaces import TapRequest
    from stitchkit.engine import DistillationTask, TrainConfig, fit, load_teacher
    from stitchkit.io.storage import load_plain_row, save_pool
    from stitchkit.pool.pool import Pool

    name, overrides, sized_teacher = FAMILIES[family]
    cls = full_registry.ancestry(family)
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    heads = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]  # LeViT: two
    conv, head = f"{cfg['first_conv']}.weight", {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    data = {"num_classes": 10, "in_chans": 1, "img_size": 32}

    # 1. each anchor starts from a 1000-class RGB checkpoint, adapted by timm to 10 grey classes
    torch.manual_seed(0)
    rows = []
    for i, kw in enumerate(overrides):
        src = _imagenet_file(tmp_path / f"anchor{i}.safetensors", name, kw)
        row = cls.from_name(name, checkpoint=tmp_path / f"anchor{i}.safetensors", **data, **kw)
        got = row.model.state_dict()
        assert set(got) == set(src)
        for key, value in got.items():
            if key in head:
                assert value.shape[0] == 10  # a new classifier (a LeViT's distillation head too)
            elif key == conv:
                torch.testing.assert_close(value, src[key].sum(dim=1, keepdim=True))  # RGB -> grey, as timm adapts
            elif value.shape != src[key].shape:  # position biases follow the grid (a Swin's windows, a LeViT's tokens)
                assert key.endswith(("relative_position_bias_table", "attention_biases")), key
                assert row.weights_record["resized"][key] == {"file": list(src[key].shape), "model": list(value.shape)}
            else:
                assert torch.equal(value, src[key]), key
        record = row.weights_record
        assert record["file"] == str(tmp_path / f"anchor{i}.safetensors") and {k: record["from"][k] for k in ("num_classes", "in_chans")} == {"num_classes": 1000, "in_chans": 3}
        assert record["adapted"][:2] == ["classifier reset (1000 -> 10 classes, new weights)", "first convolution adapted (3 -> 1 input channels)"]
        rows.append(row)

    # 2. an SN-Net pool of the two; its first anchor exported as the family's own timm network, and to ONNX
    pool = Pool.from_method(full_registry.method("snnet"), rows).eval()
    pool_file = save_pool(pool, tmp_path / "pool.safetensors")
    plain, onnx = tmp_path / "row.safetensors", tmp_path / "row.onnx"
    capsys.readouterr()
    assert main(["export", str(pool_file), "0", "-o", str(plain), "--timm", "--onnx", str(onnx)]) == 0
    out = capsys.readouterr().out
    network = type(rows[0].model).__name__
    assert f"the {family} row's own network (timm {network}) as a plain state dict" in out and f"wrote {onnx}" in out
    rebuilt = load_plain_row(plain)
    assert rebuilt.name == family and type(rebuilt.model) is type(rows[0].model)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = pool.descendant(0)(x)
        torch.testing.assert_close(rebuilt.model.eval()(x), want, rtol=1e-4, atol=1e-4)  # timm's forward vs the stitched one
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with safe_open(str(plain), framework="pt") as fh:
        assert fh.metadata()["stitchkit_adapter"] == family

    # 3. a teacher of the family's own, by timm name from a local file, gives block taps; a row distils from it
    torch.manual_seed(2)
    teacher_net = timm.create_model(name, **data) if sized_teacher else timm.create_model(name, num_classes=10, in_chans=1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in teacher_net.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    teacher = load_teacher(f"timm:{name}", digits.spec, checkpoint=str(tmp_path / "teacher.safetensors"), registry=full_registry)
    assert isinstance(teacher, cls) and teacher.name == family
    last = teacher.shape.depth - 1
    with torch.no_grad():
        taps = teacher.forward_taps(x, TapRequest(blocks=(last,)))
        torch.testing.assert_close(taps.logits, teacher_net.eval()(x), rtol=0, atol=0)
    sig = teacher.signatures()[-1]  # the last block's output, as the adapter declares it
    assert taps.blocks[last].shape[0] == 3 and sig.channels in taps.blocks[last].shape[1:]
    student = rows[0]
    loss = full_registry.build("loss", "block", teacher.shape, student.shape, options={"layout": teacher.feature_layout})
    before = [m.detach().clone() for m in loss.matrices]
    result = fit(DistillationTask(student, teacher, loss), digits,
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, device="cpu", progress=False, max_steps=2, eval_every=0),
                 out_dir=tmp_path / "distil", phase="distil")
    assert result.steps == 2 and result.last_metrics["distill"] > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, loss.matrices))  # W learned from the teacher's taps


@pytest.mark.parametrize(("family", "arch"), [
    ("timm-swin", dict(img_size=16, patch_size=2, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=4)),
    ("timm-resnet", dict(block="basic", layers=[1, 1, 1, 2], channels=[4, 8, 8, 16], stem_width=4, img_size=16)),
    ("timm-convnext", dict(depths=[1, 1, 1, 2], dims=[8, 8, 16, 16], kernel_sizes=3, patch_size=4, img_size=16)),
])
def test_every_staged_family_keeps_drop_path_rate_through_arch_and_resized(registry, family, arch):
    cls = registry.ancestry(family)
    net = cls.from_arch({**arch, "num_classes": 5, "drop_path_rate": 0.2})
    assert net.arch()["drop_path_rate"] == 0.2
    assert cls.from_arch(net.resized(net.shape)).arch()["drop_path_rate"] == 0.2


def test_model_config_builds_any_family_by_name_or_arch_through_the_registry(registry, tmp_path):
    from safetensors.torch import save_file

    from stitchkit.core.errors import CheckpointError
    from stitchkit.engine.data import DataSpec
    from stitchkit.engine.model import ModelConfig, build_model

    spec = DataSpec(num_classes=10, in_chans=1, img_size=32)
    net = build_model(spec, ModelConfig(timm_name="test_convnext", drop_path_rate=0.1), registry=registry)
    assert net.name == "timm-convnext" and net.arch()["drop_path_rate"] == 0.1 and net.num_classes == 10
    arch = dict(block="basic", layers=[1, 1, 1, 1], channels=[4, 8, 8, 16], stem_width=4)
    resnet = build_model(spec, ModelConfig(adapter="timm-resnet", arch=arch), registry=registry)
    assert resnet.input_size == (1, 32, 32)
    save_file({k: v.contiguous() for k, v in resnet.model.state_dict().items()}, str(tmp_path / "r.safetensors"))
    again = build_model(spec, ModelConfig(adapter="timm-resnet", arch=arch, checkpoint=str(tmp_path / "r.safetensors")), seed=5, registry=registry)
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), resnet.model.state_dict().values()))
    wider = {**arch, "channels": [4, 8, 8, 32]}
    with pytest.raises(CheckpointError, match=r"r\.safetensors: the weights do not fit a timm-resnet network of shape [^\n]*"
                                              r"\(layer4\.0\.conv1\.weight is \[16, 8, 3, 3\] in the file but \[32, 8, 3, 3\] in the model\)"):
        build_model(spec, ModelConfig(adapter="timm-resnet", arch=wider, checkpoint=str(tmp_path / "r.safetensors")), registry=registry)
    with pytest.raises(ConfigError, match=r"model\.arch needs model\.adapter"):
        build_model(spec, ModelConfig(arch=arch), registry=registry)


def test_a_file_of_another_family_member_is_one_checkpoint_error_naming_the_key_and_shapes(registry, tmp_path):
    import timm
    from safetensors.torch import save_file

    from stitchkit.core.errors import CheckpointError

    save_file(timm.create_model("test_convnext2").state_dict(), str(tmp_path / "other.safetensors"))  # 1000 classes
    with pytest.raises(CheckpointError) as err:
        registry.ancestry("timm-convnext").from_name("test_convnext", checkpoint=tmp_path / "other.safetensors", num_classes=10)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'other.safetensors'}: the weights are not those of timm's 'test_convnext' (")
    assert msg.endswith("); set timm_name to the architecture the file was saved from")
    assert "(stem.0.weight is [32, 3, 4, 4] in the file but [24, 3, 4, 4] in the model)" in msg  # the first key that differs


@pytest.mark.parametrize("family", ["timm-vit", "timm-swin", "timm-resnet", "timm-convnext", "timm-levit"])
def test_each_core_adapter_names_its_timm_model_and_the_hook_agrees(registry, family):
    import json

    import timm

    cls = registry.ancestry(family)
    row = cls.example()
    name, args = cls.timm_model_args(json.loads(json.dumps(row.arch())))  # through JSON, as config.json stores it
    assert registry.ancestry_for(name) == family  # the model name the adapter gives is one the hook sends back to it
    torch.manual_seed(0)
    model = timm.create_model(name, **args)
    model.load_state_dict(row.model.state_dict(), strict=True)  # the very network: same keys, same shapes


def test_a_family_that_is_no_timm_model_cannot_name_one():
    with pytest.raises(ConfigError, match=r"^rows of the 'other-vit' adapter have no timm model to write as a timm folder"):
        _Other.timm_model_args({})


def test_a_model_file_whose_weights_do_not_fit_its_arch_names_the_key_and_shapes(registry, tmp_path):
    import json

    from safetensors.torch import save_file

    from stitchkit.core.errors import PoolFormatError
    from stitchkit.engine.model import load_model

    cls = registry.ancestry("timm-resnet")
    narrow = cls.from_arch(dict(block="basic", layers=[1, 1, 1, 1], channels=[4, 8, 8, 16], stem_width=4, num_classes=3))
    wide = {**narrow.arch(), "channels": [4, 8, 8, 32]}
    meta = {"format": "stitchkit-model", "version": "1", "adapter": "timm-resnet", "arch": json.dumps(wide), "info": "{}"}
    save_file(narrow.model.state_dict(), str(tmp_path / "m.safetensors"), metadata=meta)  # a version-1 file: no digest
    with pytest.raises(PoolFormatError, match=r"m\.safetensors[^\n]*weights do not fit the stored timm-resnet arch "
                                              r"\(layer4\.0\.conv1\.weight is \[16, 8, 3, 3\] in the file but \[32, 8, 3, 3\] in the model\)"):
        load_model(tmp_path / "m.safetensors", registry)


def test_a_timm_teacher_is_priced_through_its_family_or_as_a_plain_timm_model(registry):
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from stitchkit.apps.cost import timm_teacher_macs
    from stitchkit.engine.data import DataSpec

    spec = DataSpec(num_classes=10, in_chans=1, img_size=32)
    torch.manual_seed(0)
    cnn = timm.create_model("regnety_002", num_classes=10, in_chans=1).eval()  # no adapter: a logits teacher
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        cnn(torch.zeros(1, 1, 32, 32))
    assert timm_teacher_macs("regnety_002", spec, registry) == counter.get_total_flops() // 2
    convnext = registry.ancestry("timm-convnext").from_name("test_convnext", **{"num_classes": 10, "in_chans": 1, "img_size": 32})
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        convnext.model.eval()(torch.zeros(1, 1, 32, 32))
    assert timm_teacher_macs("test_convnext", spec, registry) == counter.get_total_flops() // 2


def test_stitchkit_train_starts_a_convnext_from_an_imagenet_file_by_name_alone(tmp_path, capsys):
    """[model] timm_name only: the hook picks timm-convnext, timm adapts the 1000-class RGB file, the record is kept."""
    from stitchkit.cli.main import main
    from stitchkit.engine.model import load_model, model_info

    torch.manual_seed(0)
    _imagenet_file(tmp_path / "convnext.safetensors", "test_convnext", {})
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        '[data]\nsource = "digits"\nimg_size = 32\nin_chans = 1\n'
        f'[model]\ntimm_name = "test_convnext"\ncheckpoint = "{tmp_path / "convnext.safetensors"}"\ndrop_path_rate = 0.1\n'
        '[train]\nmax_steps = 2\nbatch_size = 16\nprogress = false\neval_every = 0\n'
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run" / "ancestry.safetensors")
    assert model.name == "timm-convnext" and model.num_classes == 10 and model.arch()["drop_path_rate"] == 0.1
    weights = model_info(tmp_path / "run" / "ancestry.safetensors")["weights"]
    assert weights["file"] == str(tmp_path / "convnext.safetensors")
    assert weights["adapted"] == ["classifier reset (1000 -> 10 classes, new weights)", "first convolution adapted (3 -> 1 input channels)"]
