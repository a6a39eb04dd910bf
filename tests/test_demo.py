"""A fast demo (tiny budget): every output exists and parses, and the report's
numbers are the pool files' own metadata."""

from __future__ import annotations

import json
import re

import pytest

from stitchkit import storage
from stitchkit.demo import run_demo
from stitchkit.registry import Registry
from stitchkit.report import pool_info

FAST = ["demo.max_steps=2", "demo.ancestry_epochs=1", "demo.auxiliary_epochs=1", "demo.finetune_epochs=1",
        "train.progress=false", "demo.rows=\"3x16:1,3x64:4\"", "model.depth=6",
        "demo.snnet_initializer_args.max_images=20"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    registry = Registry(load_entrypoints=True)
    for method in ("learngene-pool", "snnet"):
        assert method in registry.list("method"), f"the shipped {method} plugin is not installed"
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, FAST, registry=registry), out


def test_every_output_exists_and_parses(demo):
    summary, out = demo
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("learngene-pool", "snnet"):
        meta = storage.read_pool_metadata(out / f"{name}.safetensors")
        assert meta["pool"]["method"] == name
        assert len(meta["pool"]["evaluation"]) == len(meta["pool"]["paths"])  # every descendant evaluated
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(out / "accuracy.png").shape[2] in (3, 4)
    assert (out / "ancestry" / "ancestry.safetensors").is_file()
    # component options reach the builds (--set demo.<method>_initializer_args.<option>=...)
    components = {m: storage.read_pool_metadata(out / f"{m}.safetensors")["pool"]["info"]["components"]
                  for m in ("learngene-pool", "snnet")}
    assert components["snnet"]["initializer"] == {"name": "ls", "options": {"max_images": 20}}
    assert components["learngene-pool"]["initializer"] == {"name": "tm", "options": {}}


def test_equal_storage(demo):
    summary, out = demo
    a, b = (pool_info(out / f"{m}.safetensors")["storage_params"] for m in ("learngene-pool", "snnet"))
    assert a == b == summary["storage_params"]["Learngene Pool"] == summary["storage_params"]["SN-Net"]


def test_report_numbers_are_the_pool_files_metadata(demo):
    summary, out = demo
    report = (out / "report.md").read_text()
    sections = re.split(r"^## ", report, flags=re.M)
    for label, method in (("Learngene Pool", "learngene-pool"), ("SN-Net", "snnet")):
        section = next(s for s in sections if s.startswith(label + "\n"))
        rows = {}
        for line in section.splitlines():
            m = re.match(r"\| (\d+) \| .*`(.+?)` \| (\d+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|", line)
            if m:
                rows[m.group(2)] = (int(m.group(4).replace(",", "")), int(m.group(5).replace(",", "")), float(m.group(6)))
        meta = storage.read_pool_metadata(out / f"{method}.safetensors")["pool"]
        assert rows, f"no descendant rows parsed from the {label} table"
        assert len(rows) == len(meta["paths"])
        for name, (params, macs, top1) in rows.items():
            stored = meta["evaluation"][name]
            assert top1 == pytest.approx(stored["top1"], abs=0.005)
            assert params == stored["params"] and macs == stored["macs"]
    for phase in summary["phases"]:
        assert f"| {phase['phase']} | {phase['seconds']:.1f} |" in report


def test_unknown_initializer_option_stops_before_training(tmp_path):
    from stitchkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"demo.learngene_initializer_args: initializer 'tm' has no option 'ridge'"):
        run_demo(tmp_path, [*FAST, "demo.learngene_initializer_args.ridge=0.1"], registry=Registry(load_entrypoints=True))
    assert not (tmp_path / "ancestry").exists()  # refused before the ancestry trained
