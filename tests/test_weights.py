"""Starting weights from a file saved for ImageNet (224 px, 1000 classes, RGB), adapted by timm to small
digits: the model, a Learngene Pool ancestry, SN-Net anchors and ``stitchkit train``.

timm's ``test_vit`` (6 blocks, width 64, patch 16) stands in for a DeiT: same class, same loader,
a fraction of the cost. The expected tensors are computed independently of the loader: blocks are
copied unchanged, the first convolution's channels are summed (RGB -> grey), the position embedding
is bicubically resampled on its 14x14 grid.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stitchkit.cli.main import main
from stitchkit.engine import load_config
from stitchkit.engine.model import model_info
from stitchkit.core.errors import CheckpointError, ConfigError
from stitchkit.core.registry import Registry
from stitchkit.io.storage import read_pool_metadata
from stitchkit.families.vit import TimmViT
from stitchkit.families.weights import create_timm_model

NAME = "test_vit"


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(NAME, img_size=224)  # 224 px, 1000 classes, 3 channels: an ImageNet checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory, imagenet_model) -> dict[str, pathlib.Path]:
    """The same weights as plain .pth, {'model': ...}, {'state_dict': ...} and .safetensors."""
    d = tmp_path_factory.mktemp("weights")
    sd = imagenet_model.state_dict()
    out = {"pth": d / "plain.pth", "model": d / "model.pth", "state_dict": d / "sd.pth", "safetensors": d / "w.safetensors"}
    torch.save(sd, out["pth"])
    torch.save({"model": sd, "epoch": 3}, out["model"])
    torch.save({"state_dict": sd, "optimizer": {"lr": 0.1}}, out["state_dict"])
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out["safetensors"]))
    return out


def _expected_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Class token kept, the 14x14 patch grid bicubically resampled to grid x grid (what timm's ViT filter does)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    side = int(patches.shape[1] ** 0.5)
    img = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


@pytest.mark.parametrize("kind", ["pth", "model", "state_dict", "safetensors"])
def test_a_224px_1000_class_file_is_adapted_like_timm_weights(files, imagenet_model, kind):
    src = imagenet_model.state_dict()
    torch.manual_seed(1)
    model, record = create_timm_model(NAME, checkpoint=files[kind], num_classes=10, img_size=32, in_chans=1)
    got = model.state_dict()
    blocks = [k for k in src if k.startswith("blocks.") or k.startswith("norm.")]
    assert len(blocks) == 6 * 12 + 2 and all(torch.equal(got[k], src[k]) for k in blocks)
    assert torch.equal(got["cls_token"], src["cls_token"])
    torch.testing.assert_close(got["patch_embed.proj.weight"], src["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(got["pos_embed"], _expected_pos_embed(src["pos_embed"], 2), atol=1e-6, rtol=1e-5)
    assert got["head.weight"].shape == (10, 64)  # a fresh classifier, not a slice of the old one
    assert not torch.equal(got["head.weight"], src["head.weight"][:10])
    assert record is not None and record["source"] == "file" and record["file"] == str(files[kind])
    assert record["from"] == {"num_classes": 1000, "in_chans": 3}
    assert record["to"] == {"num_classes": 10, "in_chans": 1, "img_size": 32}
    assert record["resized"]["pos_embed"] == {"file": [1, 197, 64], "model": [1, 5, 64]}
    assert record["adapted"] == [
        "classifier reset (1000 -> 10 classes, new weights)",
        "first convolution adapted (3 -> 1 input channels)",
        "pos_embed resampled [1, 197, 64] -> [1, 5, 64]",
    ]


def test_a_file_already_shaped_for_the_data_keeps_its_head(tmp_path):
    torch.manual_seed(0)
    small = timm.create_model(NAME, img_size=32, in_chans=1, num_classes=10)
    save_file(small.state_dict(), str(tmp_path / "small.safetensors"))
    model, record = create_timm_model(NAME, checkpoint=tmp_path / "small.safetensors", num_classes=10, img_size=32, in_chans=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), small.state_dict().values()))
    assert record is not None and record["adapted"] == [] and record["resized"] == {}


def test_a_file_of_another_architecture_is_one_line_naming_the_key_and_shapes(files, tmp_path):
    with pytest.raises(CheckpointError) as err:
        TimmViT.from_timm("vit_tiny_patch16_224", checkpoint=files["safetensors"], num_classes=10, img_size=32, in_chans=1)
    msg = str(err.value)
    assert "\n" not in msg and str(files["safetensors"]) in msg
    assert "cls_token is [1, 1, 64] in the file but [1, 1, 192] in the model" in msg
    deeper = timm.create_model("test_vit2", img_size=224).state_dict()  # 8 blocks, LayerScale, fc_norm
    save_file(deeper, str(tmp_path / "deeper.safetensors"))
    with pytest.raises(CheckpointError, match=r"^[^\n]*is (missing from the file|in the file but not in the model)[^\n]*$"):
        create_timm_model(NAME, checkpoint=tmp_path / "deeper.safetensors", num_classes=10, img_size=32)
    with pytest.raises(ConfigError, match=r"timm has no model 'test_vitt'; did you mean 'test_vit'"):
        create_timm_model("test_vitt", checkpoint=files["pth"], num_classes=10)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable weights file"):
        create_timm_model(NAME, checkpoint=tmp_path / "junk.pth", num_classes=10)


def test_stitchkit_train_adapts_the_file_and_records_it(files, tmp_path, capsys):
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        '[data]\nsource = "digits"\nimg_size = 16\nin_chans = 1\n'
        f'[model]\ntimm_name = "{NAME}"\ncheckpoint = "{files["model"]}"\n'
        '[train]\nmax_steps = 2\nbatch_size = 32\nprogress = false\neval_every = 0\n'
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    info = model_info(tmp_path / "run" / "ancestry.safetensors")
    assert info["weights"]["resized"]["pos_embed"] == {"file": [1, 197, 64], "model": [1, 2, 64]}
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace(f'timm_name = "{NAME}"', 'timm_name = "vit_tiny_patch16_224"'))
    assert main(["train", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cls_token is [1, 1, 64] in the file but [1, 1, 192] in the model" in err


def test_learngene_pool_from_an_imagenet_checkpoint_on_32px_digits(files, tmp_path):
    registry = Registry()
    config = load_config(_toml(tmp_path, f"""
method = "learngene-pool"
[data]
source = "digits"
img_size = 32
in_chans = 1
[model]
timm_name = "{NAME}"
checkpoint = "{files['model']}"
[train]
batch_size = 32
progress = false
eval_every = 0
[learngene]
rows = "3x32:2,3x64:2"
init_images = 40
distill = {{ max_steps = 2 }}
finetune = {{ max_steps = 2 }}
"""))
    path = registry.method("learngene-pool").build(config, out_dir=tmp_path / "lg", registry=registry)
    meta = read_pool_metadata(path)["pool"]
    weights = meta["info"]["provenance"]["ancestry_weights"]
    assert weights["file"] == str(files["model"]) and "classifier reset (1000 -> 10 classes, new weights)" in weights["adapted"]
    assert weights["resized"]["pos_embed"] == {"file": [1, 197, 64], "model": [1, 5, 64]}
    assert len(meta["evaluation"]) == len(meta["paths"]) == 4


def test_snnet_anchors_from_imagenet_checkpoints_on_16px_digits(files, tmp_path):
    registry = Registry()
    config = load_config(_toml(tmp_path, f"""
method = "snnet"
[data]
source = "digits"
img_size = 16
in_chans = 1
[train]
batch_size = 32
progress = false
eval_every = 0
[snnet]
init_images = 40
finetune = {{ max_steps = 2 }}
[[snnet.anchors]]
timm_name = "{NAME}"
checkpoint = "{files['state_dict']}"
[[snnet.anchors]]
timm_name = "{NAME}"
checkpoint = "{files['safetensors']}"
"""))
    path = registry.method("snnet").build(config, out_dir=tmp_path / "sn", registry=registry)
    meta = read_pool_metadata(path)["pool"]
    weights = meta["info"]["provenance"]["anchor_weights"]
    assert [w["file"] for w in weights] == [str(files["state_dict"]), str(files["safetensors"])]
    assert all(w["resized"]["pos_embed"] == {"file": [1, 197, 64], "model": [1, 2, 64]} for w in weights)
    assert json.dumps(meta["evaluation"])  # every configuration evaluated


def _toml(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path
