"""Export folders timm and the Hugging Face Hub load (``export --hf``), and model cards read back against the pool."""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest
import timm
import torch
from huggingface_hub import ModelCard

from helpers import TINY_LEARNGENE_BUILD, tiny_row
from stitchkit.apps.hub import export_hf
from stitchkit.cli.build import build_command
from stitchkit.cli.main import main
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.errors import FileError
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape
from stitchkit.families.convnext import TimmConvNeXt
from stitchkit.families.levit import TimmLeViT
from stitchkit.families.resnet import TimmResNet
from stitchkit.families.swin import TimmSwin
from stitchkit.families.vit import TimmViT
from stitchkit.io import storage
from stitchkit.io.hub import timm_model_config
from stitchkit.pool.pool import Pool

DATA = {
    "preprocessing": {"input_size": [3, 16, 16], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
                      "std": [0.2, 0.25, 0.3], "crop_pct": 0.875, "crop_mode": "center"},
    "classes": ["ant", "bee", "cat", "dog", "eel"],
}


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> pathlib.Path:
    rows = [tiny_row(RowShape(2, 8, 2), 0), tiny_row(RowShape(2, 16, 4), 1)]
    m = SequentialMethod()
    stitches = m.stitches([r.shape for r in rows])
    pool = Pool(rows, stitches, m.paths([r.shape for r in rows], stitches), method="sequential", info={"data": DATA})
    torch.manual_seed(0)
    for layer in pool.stitches.values():
        torch.nn.init.normal_(layer.weight, std=0.3)
    pool.evaluation = {p.name: {"top1": 40.0 + 10 * i, "top5": 90.0} for i, p in enumerate(pool.paths)}
    return storage.save_pool(pool.eval(), tmp_path_factory.mktemp("hub") / "pool.safetensors", provenance={"seed": 0})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def in_pool(pool_file, key, images):
    pool = storage.load_pool(pool_file, Registry(load_entrypoints=False)).eval()
    with torch.no_grad():
        return pool.descendant(key)(images)


def test_a_single_row_folder_opens_in_timm_with_the_same_logits(pool_file, tmp_path, images, capsys):
    out = tmp_path / "narrow"
    assert main(["export", str(pool_file), "r1[0:2]", "--hf", str(out)]) == 0
    assert f"timm.create_model('local-dir:{out}', pretrained=True)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    expected = in_pool(pool_file, "r1[0:2]", images)
    with torch.no_grad():
        assert torch.equal(model(images), expected)
        assert torch.equal(storage.load_exported(out)(images), expected)
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == DATA["classes"] and cfg["num_classes"] == 5
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 16, 16) and data["interpolation"] == "bicubic" and data["crop_pct"] == 0.875
    assert list(data["mean"]) == DATA["preprocessing"]["mean"] and list(data["std"]) == DATA["preprocessing"]["std"]
    config = json.loads((out / "config.json").read_text())
    assert config["stitchkit"]["descendant"] == "r1[0:2]" and config["stitchkit"]["rows"][0]["row"] == 1


def test_a_stitched_folder_loads_with_stitchkit(pool_file, tmp_path, images):
    out = tmp_path / "stitched"
    config = export_hf(pool_file, 1, out)
    assert "architecture" not in config  # no timm model builds it
    assert config["stitchkit"]["path"] == {"segments": [[0, 0, 1], [1, 1, 2]], "stitches": ["s0_1_1"]}
    assert [r["arch"]["embed_dim"] for r in config["stitchkit"]["rows"]] == [8, 16]
    assert config["label_names"] == DATA["classes"] and config["pretrained_cfg"] == DATA["preprocessing"]
    d = storage.load_exported(out)
    with torch.no_grad():
        assert torch.equal(d(images), in_pool(pool_file, 1, images))
    assert d.classes == DATA["classes"] and d.transform is not None


@pytest.mark.parametrize("family", [TimmViT, TimmResNet, TimmSwin, TimmConvNeXt, TimmLeViT])
def test_every_timm_family_row_is_rebuilt_by_its_timm_entry_point(family):
    """config.json's architecture + model_args (through JSON) build the row's very network."""
    torch.manual_seed(0)
    row = family.example()
    row.model.eval()
    name, args = timm_model_config(row.name, json.loads(json.dumps(row.arch())))
    model = timm.create_model(name, **args).eval()
    model.load_state_dict(row.model.state_dict(), strict=True)
    x = torch.randn(2, *row.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), row.model(x))


def test_a_folder_is_replaced_only_when_it_is_an_earlier_export(pool_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "f"
    export_hf(pool_file, 0, out)
    export_hf(pool_file, 2, out)  # an earlier export: replaced whole
    assert json.loads((out / "config.json").read_text())["stitchkit"]["descendant"] == "r1[0:2]"
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", str(pool_file), "0", "--hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"stitchkit: error: {out}: the folder holds notes.txt, not only an earlier export " \
                  "(model.safetensors, config.json, README.md); give a new or empty folder\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(FileError, match="this is a file"):
        export_hf(pool_file, 0, pool_file)
    # a failure after the weights were written leaves nothing: no folder, no temporary folder
    monkeypatch.setattr("stitchkit.apps.hub.descendant_card", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_hf(pool_file, 1, tmp_path / "g")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_hf_refuses_other_outputs_beside_it(pool_file, tmp_path, capsys):
    assert main(["export", str(pool_file), "0", "--hf", str(tmp_path / "x"), "-o", str(tmp_path / "y")]) == 2
    assert "without -o, --timm or --onnx" in capsys.readouterr().err
    assert main(["export", str(pool_file), "0"]) == 2
    assert "give -o FILE" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- cards
CONFIG = TINY_LEARNGENE_BUILD


def card_table(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r] for r in rows[2:]]  # after the header and the alignment row


def test_a_built_pool_has_a_card_that_reads_back_against_the_pool(tmp_path, capsys, monkeypatch):
    toml = tmp_path / "lg.toml"
    toml.write_text(CONFIG)
    pool_path = build_command(toml, out_dir=tmp_path / "run", registry=Registry())
    card_path = pool_path.with_suffix(".md")
    text = card_path.read_text()
    card = ModelCard(text)
    assert card.data.library_name == "stitchkit" and card.data.datasets == ["digits"] and card.data.metrics == ["accuracy"]
    assert {"learngene-pool", "image-classification"} <= set(card.data.tags)

    pool = storage.load_pool(pool_path).eval()
    table = card_table(text, "Descendants")
    assert len(table) == len(pool.paths)
    for row, path in zip(table, pool.paths, strict=True):
        index, name, _, blocks, params, macs, top1, top5 = row
        assert name == f"`{path.name}`" and int(blocks) == path.num_blocks
        counted = sum(p.numel() for p in pool.descendant(path).parameters())  # an independent count
        assert int(params.replace(",", "")) == counted
        assert int(macs.replace(",", "")) > 0
        assert top1 == f"{pool.evaluation[path.name]['top1']:.2f}"
    rows = card_table(text, "Rows and stitch layers")
    assert [r[2] for r in rows] == ["2x16:2", "2x32:2"]
    assert [int(r[4].replace(",", "")) for r in rows] == [sum(p.numel() for p in r.parameters()) for r in pool.rows]
    training = text.split("## Training\n", 1)[1]
    assert 'batch_size 32' in training and 'lr 0.002' in training and "initializer: `tm`" in training
    assert '`[learngene]`: rows "2x16:2,2x32:2"' in training and 'finetune {"max_steps": 2}' in training

    # its load lines run as written, from the pool's folder
    code = re.search(r"## Load\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(pool_path.parent)
    scope: dict = {}
    exec(code, scope)
    assert len(scope["pool"].paths) == len(pool.paths) and isinstance(scope["model"], torch.nn.Module)

    # reproducible: 'stitchkit card' writes the same bytes from the same file
    assert main(["card", str(pool_path), "-o", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == text
    assert main(["card", str(pool_path), "-o", str(pool_path)]) == 2  # never over the pool
    assert "stitchkit: error:" in capsys.readouterr().err


def test_a_card_shows_the_builds_record_and_anchors(pool_file):
    """SN-Net records its anchors and recipe in info.snnet; the card lists them (long values cut, never dumped)."""
    from stitchkit.apps.cards import pool_card
    from stitchkit.apps.report import file_descendants_table
    from stitchkit.io.header import read_pool_metadata

    meta = read_pool_metadata(pool_file)
    meta["pool"]["method"] = "snnet"
    meta["pool"]["info"]["snnet"] = {"anchors": [{"source": "deit_tiny_patch16_224", "weights": "timm", "trained_here": False},
                                                 {"source": "2x16:4", "weights": "random", "trained_here": True}],
                                     "finetune_steps": 6, "levels": list(range(500))}
    text = pool_card(meta, file_descendants_table(meta), [1, 2], 3, "p.safetensors")
    assert "Anchors: deit_tiny_patch16_224 (timm), 2x16:4 (random, trained here)." in text
    record = next(line for line in text.splitlines() if line.startswith("- the build's record (`info.snnet`)"))
    assert "finetune_steps `6`" in record and " ...`" in record and len(record) < 700
    assert "SN-Net (Pan et al., CVPR 2023)" in text and "tags: [\"stitchkit\", \"image-classification\", \"model-stitching\", \"snnet\"]" in text


def test_an_in_memory_pool_exports_the_same_folder(pool_file, tmp_path, images):
    pool = storage.load_pool(pool_file, Registry(load_entrypoints=False)).eval()
    a, b = tmp_path / "from-pool", tmp_path / "from-file"
    config = export_hf(pool, "r0[0:2]", a)
    assert config == export_hf(pool_file, "r0[0:2]", b)  # sizes computed for the pool equal the stored ones
    assert (a / "README.md").read_text().replace("from-pool", "X") == (b / "README.md").read_text().replace("from-file", "X")
    model = timm.create_model(f"local-dir:{a}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(images), pool.descendant(0)(images))
