"""The command line: plan output against independent counts, errors on one line."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import block_macs, block_params, head_params, stem_macs, stem_params
from stitchkit.cli.main import main


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_deit_base_pool_of_12(capsys):
    out = run_json(capsys, "plan", "--method", "sequential", "--ancestry", "deit_base_patch16_224",
                   "--rows", "6x192:3,6x768:12", "--json")
    narrow = stem_params(192, 224, 16, 3) + 6 * block_params(192) + head_params(192, 1000)
    wide = stem_params(768, 224, 16, 3) + 6 * block_params(768) + head_params(768, 1000)
    stitches = 5 * (192 * 768 + 768)
    assert out["storage_params"] == narrow + wide + stitches
    assert isinstance(out["storage_params"], int)
    assert len(out["descendants"]) == 7
    by_blocks = {d["name"]: d for d in out["descendants"]}
    k = 2  # two narrow blocks, stitch, four wide blocks
    d = by_blocks["r0[0:2]+s0_1_2+r1[2:6]"]
    assert d["params"] == (stem_params(192, 224, 16, 3) + 2 * block_params(192) + 192 * 768 + 768
                           + (6 - k) * block_params(768) + head_params(768, 1000))
    n = 197
    assert d["macs"] == (stem_macs(192, 224, 16, 3) + 2 * block_macs(192, n) + n * 192 * 768
                         + 4 * block_macs(768, n) + 768 * 1000)
    assert d["params"] - d["params_published"] == 192 + 197 * 192
    sizes = [x["params"] for x in out["descendants"]]
    assert sizes == sorted(sizes)


def test_plan_nine_block_rows(capsys):
    out = run_json(capsys, "plan", "--ancestry", "deit_base_patch16_224", "--rows", "9x768:12,9x192:3", "--json")
    assert len(out["descendants"]) == 10 and out["stitch_layers"] == 8
    assert [r["width"] for r in out["rows"]] == [192, 768]  # sorted narrow first


def test_plan_table_output(capsys):
    assert main(["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3,2x192:3"]) == 0
    text = capsys.readouterr().out
    assert "storage:" in text and "3 descendants" in text


def test_bad_input_is_one_line_error(capsys):
    assert main(["plan", "--ancestry", "deit_base_patch16_224", "--rows", "6x192"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stitchkit: error: a timm-vit row is one stage with attention heads") and err.count("\n") == 1
    assert main(["plan", "--method", "sequentail", "--ancestry", "deit_base_patch16_224", "--rows", "6x192:3"]) == 2
    assert "did you mean 'sequential'" in capsys.readouterr().err
    assert main(["plan", "--ancestry", "not_a_timm_model", "--rows", "6x192:3"]) == 2
    assert "not_a_timm_model" in capsys.readouterr().err


def test_plugins_command_lists_core_components(capsys):
    out = run_json(capsys, "plugins", "--json")
    names = {(c["kind"], c["name"]): c["plugin"] for c in out["components"]}
    assert names[("method", "sequential")] == "stitchkit"
    assert names[("ancestry", "timm-vit")] == "stitchkit"
    assert names[("sampler", "sandwich")] == "stitchkit"


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "stitchkit.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("plan", "plugins", "info", "build"):
        assert command in proc.stdout
