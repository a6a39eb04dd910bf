"""The shipped Fashion-MNIST configs: valid, one recipe, equal storage and equal budgets across the methods."""

from __future__ import annotations

import pathlib
import tomllib

from stitchkit_learngene import CONFIGS as LG
from stitchkit_snnet import CONFIGS as SN
from stitchkit_snnetv2 import CONFIGS as SN2

from stitchkit.engine.settings import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANCESTRY = "runs/fmnist-ancestry/ancestry.safetensors"  # what the docs' first command writes


def test_the_fashion_mnist_configs_share_one_recipe_and_equal_storage():
    ancestry = load_config(ROOT / "src" / "stitchkit" / "configs" / "fashion-mnist-ancestry.toml")
    lg = load_config(LG / "learngene_fashion_mnist.toml")
    sn = load_config(SN / "fashion-mnist.toml", ["snnet.teacher=largest-anchor"])  # the teacher file exists only after train
    v2 = load_config(SN2 / "fashion-mnist.toml", ["snnetv2.teacher=largest-anchor"])
    assert lg["learngene"]["ancestry"] == ANCESTRY
    for path, name in ((SN / "fashion-mnist.toml", "snnet"), (SN2 / "fashion-mnist.toml", "snnetv2")):  # both teach with the ancestry
        assert tomllib.loads(path.read_text())[name]["teacher"] == ANCESTRY
    for cfg in (lg, sn, v2):
        assert cfg["data"] == ancestry["data"]  # same data, splits and shift as the ancestry
        assert cfg["data"]["source"] == "fashion-mnist" and cfg["data"]["train_images"] == 0
    assert {k: lg["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")} == \
           {k: ancestry["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")}
    # equal storage: SN-Net's and SN-Netv2's anchors are the pool's rows, at the ancestry's patch size
    rows = lg["learngene"]["rows"].split(",")
    for cfg, name in ((sn, "snnet"), (v2, "snnetv2")):
        assert [a["shape"] for a in cfg[name]["anchors"]] == rows
        assert {a["patch_size"] for a in cfg[name]["anchors"]} == {ancestry["model"]["patch_size"]}
    # equal budgets: anchors trained as long as the rows are distilled; every method fine-tunes as long, at one lr
    assert sn["snnet"]["anchor_training"]["epochs"] == lg["learngene"]["distill"]["epochs"]
    finetunes = [lg["learngene"]["finetune"], sn["snnet"]["finetune"], v2["snnetv2"]["finetune"]]
    assert len({(f["epochs"], f["lr"]) for f in finetunes}) == 1
    assert lg["train"] == sn["train"] == v2["train"]
    # SN-Netv2 runs on the anchors the SN-Net build writes
    assert [a["checkpoint"] for a in v2["snnetv2"]["anchors"]] == [f"runs/fmnist-snnet/anchors/anchor{i}.safetensors" for i in range(2)]
