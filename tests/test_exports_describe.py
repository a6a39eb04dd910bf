"""Exported descendants describe themselves: the preprocessing (timm's data config) and class names travel
with the stitchkit file, the ``--timm`` state dict and the ONNX file, and ``load_exported`` returns an
eval-mode model whose ``transform`` reproduces the pool's recorded top-1 on the test images."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import numpy as np
import pytest
import torch

import stitchkit
from stitchkit.cli.main import main
from stitchkit.engine import load_config
from stitchkit.core.registry import Registry
from stitchkit.io.storage import read_pool_metadata

CLASSES = [f"digit-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> pathlib.Path:
    """600 of scikit-learn's digits as 8x8 PNG files in train/ (400), val/ (100), test/ (100), one folder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i in range(600):
        split = "train" if i < 400 else "val" if i < 500 else "test"
        folder = root / split / CLASSES[int(digits.target[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pool_file(digits_folder, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("pool")
    (out / "lg.toml").write_text(f"""
method = "learngene-pool"
[data]
source = "imagefolder"
root = "{digits_folder}"
img_size = 16
in_chans = 3
[model]
depth = 4
embed_dim = 32
num_heads = 2
patch_size = 4
[train]
batch_size = 32
lr = 2e-3
progress = false
eval_every = 0
[learngene]
rows = "2x16:2,2x32:2"
init_images = 40
ancestry_train = {{ max_steps = 30 }}
distill = {{ max_steps = 4 }}
finetune = {{ max_steps = 4 }}
""")
    registry = Registry()
    return registry.method("learngene-pool").build(load_config(out / "lg.toml"), out_dir=out / "run", registry=registry)


def test_an_exported_model_with_its_stored_transform_reproduces_the_recorded_top1(pool_file, digits_folder, tmp_path):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    recorded = read_pool_metadata(pool_file)["pool"]["evaluation"]
    target = tmp_path / "small.safetensors"
    assert main(["export", str(pool_file), "2", "-o", str(target)]) == 0  # a stitched descendant
    # the documented five lines (docs/training.md, "Inference with an exported model"), run as written
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    block = page.split("## Inference with an exported model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 5
    block = block.replace('"small.safetensors"', repr(str(target))).replace('"my-images/test"', repr(str(digits_folder / "test")))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(block, "training.md", "exec"), {})
    top1 = float(printed.getvalue().split()[0])
    stored = recorded[model_name(target)]
    assert top1 == pytest.approx(stored["top1"], abs=1e-9) and stored["images"] == 100

    model = stitchkit.load_exported(target)
    test = ImageFolder(str(digits_folder / "test"), transform=model.transform)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(test, batch_size=64))
    assert 100.0 * correct / len(test) == pytest.approx(stored["top1"], abs=1e-9)
    assert not model.training and model.classes == CLASSES
    assert model.preprocessing == {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "crop_mode": "center"}
    import timm.data

    resolved = timm.data.resolve_data_config(model=model)  # timm reads the same config from the model
    assert resolved["input_size"] == (3, 16, 16) and resolved["crop_pct"] == 1.0 and resolved["interpolation"] == "bilinear"


def model_name(path: pathlib.Path) -> str:
    from stitchkit.io.storage import read_descendant_metadata

    return read_descendant_metadata(path)["descendant"]["name"]


def test_timm_and_onnx_exports_carry_the_preprocessing_and_classes(pool_file, tmp_path):
    import onnx  # the onnx extra is part of the test environment: missing, this test fails
    from safetensors import safe_open

    plain = tmp_path / "row.safetensors"
    assert main(["export", str(pool_file), "0", "-o", str(plain), "--timm", "--onnx", str(tmp_path / "row.onnx")]) == 0
    with safe_open(str(plain), framework="pt") as fh:
        meta = fh.metadata()
    pre = json.loads(meta["stitchkit_preprocessing"])
    assert pre["input_size"] == [3, 16, 16] and json.loads(meta["stitchkit_classes"]) == CLASSES
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "row.onnx")).metadata_props}
    assert json.loads(props["stitchkit_preprocessing"]) == pre and json.loads(props["stitchkit_classes"]) == CLASSES
    stitched = tmp_path / "stitched.safetensors"
    assert main(["export", str(pool_file), "2", "-o", str(stitched), "--onnx", str(tmp_path / "stitched.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "stitched.onnx")).metadata_props}
    assert json.loads(props["stitchkit_preprocessing"]) == pre and json.loads(props["stitchkit_classes"]) == CLASSES
