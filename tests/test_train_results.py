"""What ``stitchkit train`` ends with, and ``stitchkit info`` on the model file it writes."""

from __future__ import annotations

import json

import torch

from stitchkit.cli.main import main
from stitchkit.engine.model import load_model, model_info

CONFIG = """
[data]
source = "synthetic"
img_size = 8
synthetic_samples = 100
train_images = 40
[model]
depth = 2
embed_dim = 16
num_heads = 2
patch_size = 4
[train]
epochs = 3
batch_size = 8
progress = false
eval_every = 0
"""


def test_train_reports_its_test_accuracy_and_info_reads_the_model(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    threads = torch.get_num_threads()
    try:
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    path = tmp_path / "run" / "ancestry.safetensors"
    info = model_info(path)
    test = info["evaluation"]["test"]
    # 100 images: round(0.2 * 100) = 20 test, 10 val, 70 left of which a 40-image subset trains
    assert test["images"] == 20 and info["train_images"] == 40
    assert info["steps"] == 3 * (40 // 8) and info["epochs"] == 3
    assert f"test top-1 {test['top1']:.2f} % (top-5 {test['top5']:.2f} %) on 20 test images (synthetic)" in out
    assert "trained 15 steps (3 epochs of 40 training images)" in out
    assert f"model written to {path}" in out and str(tmp_path / "run" / "runs.jsonl") in out
    assert info["config"]["data"]["train_images"] == 40 and info["data"]["splits"]["train"]["subset_of"] == 70

    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    params = sum(p.numel() for p in load_model(path).model.parameters())
    assert f"{params:,} params" in text and "one network: a model file from stitchkit train" in text
    assert f"test top-1 {test['top1']:.2f} %, top-5 {test['top5']:.2f} % on 20 images" in text
    assert "train: 40 images from synthetic, a stratified subset of 70 (seed 0)" in text
    assert "trained 15 steps = 3 epochs of 40 images (batch 8, lr 0.0005, seed 0)" in text
    assert main(["info", str(path), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["kind"] == "model" and js["params"] == params and js["info"]["evaluation"]["test"] == test
