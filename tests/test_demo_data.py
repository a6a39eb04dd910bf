"""``stitchkit demo --data fashion-mnist``: the shipped config on small idx files of the test's own, and a report
that names the data, the budget actually trained and the published baselines."""

from __future__ import annotations

import json
import pathlib

import pytest
from test_idx_data import write_set

from stitchkit.apps.demo import default_config_path, run_demo
from stitchkit.core.errors import ConfigError
from stitchkit.core.registry import Registry
from stitchkit.engine.idx import BASELINES
from stitchkit.engine.model import model_info
from stitchkit.engine.settings import load_config

FAST = ["demo.max_steps=2", "demo.ancestry_epochs=1", "demo.auxiliary_epochs=1", "demo.finetune_epochs=1",
        "train.progress=false", "demo.rows=\"3x16:1,3x64:4\"", "model.depth=6", "model.patch_size=4",
        "demo.snnet_initializer_args.max_images=20", "data.img_size=8", "data.val_fraction=0.2",
        "data.train_images=100", "demo.workers=1", "train.batch_size=20"]


def test_the_demo_on_fashion_mnist_names_its_data_budget_and_baselines(tmp_path):
    root = tmp_path / "fm"
    write_set(root, n_train=200, n_test=20, size=8)
    out = tmp_path / "demo"
    summary = run_demo(out, [*FAST, f"data.root=\"{root}\""], data="fashion-mnist", registry=Registry(load_entrypoints=True))
    report = (out / "report.md").read_text()
    info = model_info(summary["ancestry"])
    assert info["steps"] == 2 and info["train_images"] == 100
    assert "stitchkit demo on Fashion-MNIST" in report
    # 200 training images: round(0.2 * 200) = 40 validation, 160 left, of which a 100-image subset trains
    assert ("Data: Fashion-MNIST (the official idx files, 8x8 grey): 100 (a stratified subset, seed 0, of 160) training, "
            "40 validation and 20 test images (test: the official test set)") in report
    # the budget actually trained, not demo.ancestry_epochs: 2 steps (the cap) of 100 // 20 = 5 per epoch
    assert f"trained 2 steps (0.4 epochs of 100 images): test top-1 {info['evaluation']['test']['top1']:.2f} %" in report
    assert "each phase capped at 2 steps" in report
    for label, top1 in BASELINES["fashion-mnist"]:
        assert f"{label} {top1:g} %" in report
    assert "No benchmark ranges over seeds exist for the demo on Fashion-MNIST" in report
    assert "`python benchmarks/fashion_mnist.py`" in report and (pathlib.Path(__file__).parents[1] / "benchmarks" / "fashion_mnist.py").is_file()
    assert json.loads((out / "summary.json").read_text())["report"] == str(out / "report.md")


def test_the_shipped_fashion_mnist_demo_config():
    raw = load_config(default_config_path("fashion-mnist"))
    assert raw["data"]["source"] == "fashion-mnist" and raw["data"]["train_images"] == 12000
    assert (raw["model"]["depth"], raw["model"]["embed_dim"], raw["model"]["patch_size"]) == (12, 64, 7)
    shipped = load_config(default_config_path("fashion-mnist").parent / "fashion-mnist-ancestry.toml")
    assert {k: shipped["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")} == \
           {k: raw["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")}
    with pytest.raises(ConfigError, match="ships configs for digits, fashion-mnist"):
        default_config_path("cifar10")
