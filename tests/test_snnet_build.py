"""End-to-end SN-Net builds on digits: tiny anchors trained here, LS init, fine-tuning, pool file."""

from __future__ import annotations

import json

import pytest
import torch

from stitchkit.engine import TrainConfig, build_data, evaluate, load_config
from stitchkit.engine.data import DataConfig
from stitchkit.core.errors import ConfigError
from stitchkit.core.registry import Registry
from stitchkit.io.storage import load_descendant, load_pool, read_pool_metadata
from stitchkit_snnet import plugin




@pytest.fixture(scope="module")
def registry():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(plugin, name="snnet")
    return reg


def write_config(tiny_config, tmp_path, trainable="all", distillation="hard"):
    path = tmp_path / "snnet.toml"
    path.write_text(tiny_config(
        "snnet", ["2x16:2", "2x32:4"], train="seed = 0\nepochs = 1\nmax_steps = 4\nlr = 1e-3",
        section=f'init_images = 40\ntrainable = "{trainable}"\ndistillation = "{distillation}"\n[snnet.finetune]\nmax_steps = 6'))
    return path


def test_tiny_build_writes_loadable_pool_and_resumes(tmp_path, registry, tiny_config):
    config = load_config(write_config(tiny_config, tmp_path))
    out = tmp_path / "run"
    path = registry.method("snnet").build(config, out_dir=out, registry=registry)
    meta = read_pool_metadata(path)
    pool = load_pool(path, registry)
    # depth 2 paired stitching: (0,0), (0,1), (1,0), (1,1) on one layer, after the two anchors
    assert [p.label for p in pool.paths] == ["anchor 0", "anchor 1", "0->1 (0,0)", "0->1 (0,1)", "0->1 (1,0)", "0->1 (1,1)"]
    assert list(pool.stitches) == ["s0_1_0"]
    assert pool.method == "snnet"
    data = build_data(DataConfig.from_config(config))
    x = torch.stack([data.test[i][0] for i in range(8)])
    pool.eval()
    for p in pool.paths:
        logits = pool.descendant(p)(x)
        assert logits.shape == (8, 10) and torch.isfinite(logits).all()
        alone = load_descendant(path, p.label, registry).eval()  # reads only this configuration's tensors
        torch.testing.assert_close(alone(x), logits)
    assert set(pool.evaluation) == {p.name for p in pool.paths}
    loader = data.test_loader()
    for p in pool.paths:  # the stored top-1 is a fresh evaluation's, on the test split
        assert pool.evaluation[p.name]["top1"] == pytest.approx(evaluate(pool.descendant(p), loader)["top1"])
    info = pool.info["snnet"]
    assert info["finetune_steps"] == 6 and info["teacher"] == "largest-anchor"
    assert [a["shape"] for a in info["anchors"]] == ["2x16:2", "2x32:4"]
    assert (out / "anchors" / "anchor1.safetensors").is_file()
    assert json.loads((out / "evaluation.json").read_text())["split"] == "test"
    # a re-run resumes every finished phase and rewrites the same weights
    first = {k: v.clone() for k, v in pool.state_dict().items()}
    again = load_pool(registry.method("snnet").build(config, out_dir=out, registry=registry), registry)
    for k, v in again.state_dict().items():
        assert torch.equal(v, first[k]), k
    assert meta["pool"]["paths"] == read_pool_metadata(path)["pool"]["paths"]


def test_checkpoint_anchors_stitches_only_and_teacher_file(tmp_path, registry, tiny_config):
    """Anchors from local files, only stitch layers trained: the rows stay bit-identical to the files."""
    from stitchkit.engine import save_model
    from stitchkit.families.vit import TimmViT
    from stitchkit.io.state_dicts import read_state_dict

    files = []
    for i, (width, heads, depth) in enumerate([(16, 2, 2), (32, 4, 2), (16, 2, 1)]):
        torch.manual_seed(i)
        net = TimmViT.from_arch(dict(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=width, depth=depth, num_heads=heads))
        files.append(save_model(net, tmp_path / f"net{i}.safetensors"))
    anchors = ", ".join(f'{{shape = "2x{w}:{h}", patch_size = 4, checkpoint = "{f}"}}' for (w, h), f in zip([(16, 2), (32, 4)], files))
    config = load_config(
        write_config(tiny_config, tmp_path, trainable="stitches", distillation="soft"),
        [f"snnet.anchors=[{anchors}]", f'snnet.teacher="{files[2]}"', "snnet.kernel_size=1", "snnet.initializer_args.max_images=7",
         'snnet.initializer_args.mode="train"'],
    )
    out = tmp_path / "run"
    pool = load_pool(registry.method("snnet").build(config, out_dir=out, registry=registry), registry)
    for i in range(2):
        row = pool.rows[i].state_dict()
        assert all(torch.equal(row[k], v) for k, v in read_state_dict(files[i]).items())
    assert not (out / "anchors").exists()  # nothing trained here
    info = pool.info["snnet"]
    assert info["teacher"] == str(files[2]) and info["finetune_steps"] == 6
    assert [a["weights"] for a in info["anchors"]] == ["checkpoint", "checkpoint"]
    # kernel_size 1 on 2 blocks: windows [0] and [1] give (0,0) and (1,1), one layer each
    assert info["stitching"] == {"kernel_size": 1, "stride": 1, "nearest": True}
    assert [p.label for p in pool.paths] == ["anchor 0", "anchor 1", "0->1 (0,0)", "0->1 (1,1)"]
    assert sorted(pool.stitches) == ["s0_1_0", "s0_1_1"]
    assert pool.info["components"]["initializer"] == {"name": "ls", "options": {"max_images": 7, "mode": "train"}}


@pytest.mark.parametrize(
    "edit,match",
    [
        ({"snnet": {"anchors": []}}, "list the anchors"),
        ({"snnet": {"anchors": [{"shape": "2x16:2"}]}}, "say how to get the anchor's weights"),
        ({"snnet": {"anchors": [{"shape": "2x16:2", "pretrained": True}]}}, "needs snnet.anchors\\[0\\].timm_name"),
        ({"snnet": {"trainable": "heads"}}, "trainable must be one of"),
        ({"snnet": {"kernel_size": 0}}, "snnet.kernel_size must be >= 1"),
        ({"snnet": {"finetune": {"lrr": 1.0}}}, "did you mean 'lr'"),
        ({"snnet": {"teacher": "missing.safetensors"}}, "neither 'largest-anchor'"),
        ({"snnet": {"anchors": [{"shape": "2x32:4", "train": True}, {"shape": "2x16:2", "train": True}]}}, "ordered by size"),
        ({"snnet": {"initializer_args": {"lam": 0.01}}},
         r"snnet.initializer_args: initializer 'ls' has no option 'lam' \(accepted options: max_images"),
        ({"snnet": {"sampler": "flops-grouped", "sampler_args": {"group": 2}}}, "sampler 'flops-grouped' has no option 'group'"),
        # the type a factory annotates, before data is read (ls: max_images: int | None)
        ({"snnet": {"initializer_args": {"max_images": "7"}}},
         r"^snnet.initializer_args: initializer 'ls': option 'max_images' must be an int or None, got '7' \(str\)"),
    ],
)
def test_bad_configs_are_refused(tmp_path, registry, edit, match, tiny_config):
    config = load_config(write_config(tiny_config, tmp_path))
    for key, value in edit["snnet"].items():
        config["snnet"][key] = value
    config["train"]["max_steps"] = 1
    config["snnet"].setdefault("finetune", {})["max_steps"] = 1
    with pytest.raises(ConfigError, match=match):
        registry.method("snnet").build(config, out_dir=tmp_path / "bad", registry=registry)


def test_shipped_configs_resolve_and_validate(registry):
    from stitchkit.engine import section
    from stitchkit.core.spec import RowShape
    from stitchkit_snnet import CONFIGS
    from stitchkit_snnet.config import SNNetConfig
    from stitchkit_snnet.method import SNNetMethod

    names = sorted(p.name for p in CONFIGS.glob("*.toml"))
    assert names == ["deit-imagenet.toml", "digits-levit.toml", "digits-resnet.toml", "digits.toml", "equal-storage-digits.toml",
                     "fashion-mnist.toml"]
    # fashion-mnist.toml's teacher is the ancestry `stitchkit train` writes first (the docs' order); a file is checked to exist
    teacher = {"fashion-mnist.toml": ["snnet.teacher=largest-anchor"]}
    for name in names:
        config = load_config(CONFIGS / name, teacher.get(name, []))
        assert config["method"] == "snnet"
        cfg = section(config, "snnet", SNNetConfig)
        cfg.train_config(TrainConfig.from_config(config), "finetune")
    deit = section(load_config(CONFIGS / "deit-imagenet.toml"), "snnet", SNNetConfig).anchor_configs()
    assert [a.timm_name for a in deit] == ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]
    # the equal-storage baseline has the Learngene digits rows and as many stitch layers (l - 1 = 2)
    equal = section(load_config(CONFIGS / "equal-storage-digits.toml"), "snnet", SNNetConfig).anchor_configs()
    rows = [RowShape(a.depth, a.embed_dim, a.num_heads) for a in equal]
    assert rows == [RowShape(3, 32, 2), RowShape(3, 64, 4)]
    assert len(SNNetMethod().stitches(rows)) == 2
    # Fashion-MNIST: the Learngene Pool config's rows (equal storage), patch 7 like the ancestry, one stitch layer
    fm = section(load_config(CONFIGS / "fashion-mnist.toml", teacher["fashion-mnist.toml"]), "snnet", SNNetConfig).anchor_configs()
    assert [(RowShape(a.depth, a.embed_dim, a.num_heads), a.patch_size, a.train) for a in fm] == [
        (RowShape(6, 16, 1), 7, True), (RowShape(6, 64, 4), 7, True)]
    # the ResNet digits anchors: timm-resnet networks given by arch, stitched in stages 1 and 2
    # (stage depths 2 -> 4 and 2 -> 6: 3 + 5 configurations on 2 + 2 layers, as ResNet-18 -> ResNet-50)
    resnets = section(load_config(CONFIGS / "digits-resnet.toml"), "snnet", SNNetConfig).anchor_configs()
    assert [(a.adapter, a.arch["layers"]) for a in resnets] == [("timm-resnet", [2, 2, 2, 2]), ("timm-resnet", [2, 4, 6, 2])]
    shapes = [RowShape.staged([(d, w, 0) for d, w in zip(a.arch["layers"], a.arch["channels"])]) for a in resnets]
    assert len(SNNetMethod().paths(shapes, SNNetMethod().stitches(shapes))) == 2 + 3 + 5
    # the LeViT digits anchors: the official LeViT-192 -> 256 structure (depths 4-4-4, the true heads, stages 0 and 1
    # stitched): 2 anchors + 3 + 3 configurations on 3 + 3 Linear layers
    levits = section(load_config(CONFIGS / "digits-levit.toml"), "snnet", SNNetConfig).anchor_configs()
    assert [a.adapter for a in levits] == ["timm-levit"] * 2
    shapes = [RowShape.staged(list(zip(a.arch["depth"], a.arch["embed_dim"], a.arch["num_heads"]))) for a in levits]
    assert [str(r) for r in shapes] == ["4x24:3/4x36:5/4x48:6", "4x32:4/4x48:6/4x64:8"]
    stitches = SNNetMethod().stitches(shapes)
    assert len(stitches) == 6 and len(SNNetMethod().paths(shapes, stitches)) == 2 + 3 + 3
