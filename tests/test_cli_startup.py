"""The command line imports only what a command needs: --help, --version and info run without torch.

Each command runs in a fresh interpreter that reports which heavy modules it
imported; timing is left to benchmarks/cli_latency.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import stitchkit.io.storage as storage
from helpers import block_params, head_params, stem_params, tiny_row
from stitchkit.core.errors import PoolFormatError
from stitchkit.pool.pool import Pool
from stitchkit.apps.report import pool_info, pool_sizes
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import RowShape

HEAVY = ("torch", "timm", "safetensors.torch", "numpy")
PROBE = """
import json, sys
from stitchkit.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def run_cli(*argv: str) -> tuple[str, dict]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc.stdout, report


@pytest.fixture(scope="module")
def pool_and_file(tmp_path_factory):
    rows = [tiny_row(RowShape(2, 16, 2), seed=0), tiny_row(RowShape(2, 32, 4), seed=1)]
    pool = Pool.from_method(SequentialMethod(), rows)
    path = storage.save_pool(pool, tmp_path_factory.mktemp("cli") / "pool.safetensors")
    storage.update_evaluation(path, {0: {"top1": 12.5}, 2: {"top1": 50.0, "top5": 90.0}})
    return pool, path


def test_import_stitchkit_does_not_import_torch():
    code = "import sys, stitchkit; print(json.dumps(['torch' in sys.modules, stitchkit.__version__]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120)
    loaded, ver = json.loads(out.stdout)
    assert loaded is False and ver
    # the public names still resolve (importing torch then), and unknown ones fail as usual
    import stitchkit

    assert stitchkit.Pool is Pool and "Pool" in dir(stitchkit)
    with pytest.raises(AttributeError, match="no attribute 'Pooll'"):
        stitchkit.Pooll  # noqa: B018


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["info", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    out, report = run_cli(*argv)
    assert report == {"code": 0, "loaded": []}
    assert "stitchkit" in out


def test_info_reads_the_header_only(pool_and_file):
    pool, path = pool_and_file
    out, report = run_cli("info", "--json", str(path))
    assert report == {"code": 0, "loaded": []}
    info = json.loads(out)
    # independent counts: the rows and a stitched descendant by hand
    narrow = stem_params(16, 16, 4, 3) + 2 * block_params(16) + head_params(16, 5)
    wide = stem_params(32, 16, 4, 3) + 2 * block_params(32) + head_params(32, 5)
    assert [r["params"] for r in info["rows"]] == [narrow, wide]
    assert info["storage_params"] == narrow + wide + 1 * (16 * 32 + 32)
    stitched = next(d for d in info["descendants"] if d["name"] == "r0[0:1]+s0_1_1+r1[1:2]")
    assert stitched["params"] == stem_params(16, 16, 4, 3) + block_params(16) + 16 * 32 + 32 + block_params(32) + head_params(32, 5)
    assert [d.get("top1") for d in info["descendants"]] == [12.5, None, 50.0]
    # and the same as computing everything with torch
    sizes = pool_sizes(pool)
    assert [(d["params"], d["macs"]) for d in info["descendants"]] == [(s["params"], s["macs"]) for s in sizes["descendants"]]
    text, report = run_cli("info", str(path))
    assert report == {"code": 0, "loaded": []}
    assert "r0[0:1]+s0_1_1+r1[1:2]" in text and f"{narrow + wide + 16 * 32 + 32:,} params" in text


def _rewrite_pool_json(src, dst, change) -> None:
    header, data = storage._read_header(src), src.read_bytes()
    meta = dict(header.metadata or {})
    desc = json.loads(meta["pool"])
    change(desc)
    meta["pool"] = json.dumps(desc)
    import struct

    from stitchkit.io.header import stamp

    entries = {"__metadata__": stamp(meta), **header.entries}
    text = json.dumps(entries).encode()
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[header.data_start:])


def test_info_without_stored_sizes_recomputes_them(pool_and_file, tmp_path):
    """A file written before sizes were stored: info computes the same numbers (importing torch)."""
    _, path = pool_and_file
    old = tmp_path / "old.safetensors"
    _rewrite_pool_json(path, old, lambda d: d.pop("sizes"))
    assert pool_info(old)["descendants"] == pool_info(path)["descendants"]
    assert pool_info(old)["storage_params"] == pool_info(path)["storage_params"]


def test_sizes_that_do_not_fit_the_pool_are_refused(pool_and_file, tmp_path):
    _, path = pool_and_file
    bad = tmp_path / "bad.safetensors"
    _rewrite_pool_json(path, bad, lambda d: d["sizes"]["descendants"].pop())
    with pytest.raises(PoolFormatError, match=r"'sizes.descendants' has 2 entries for 3 descendants"):
        storage.read_pool_metadata(bad)
    _rewrite_pool_json(path, bad, lambda d: d["sizes"].update(storage_params=-1))
    with pytest.raises(PoolFormatError, match="storage_params: -1 is below the minimum 0"):
        storage.read_pool_metadata(bad)
    _, report = run_cli("info", str(bad))
    assert report == {"code": 2, "loaded": []}


def test_saved_sizes_match_the_pool_in_any_dtype(tmp_path):
    rows = [tiny_row(RowShape(2, 16, 2), seed=0), tiny_row(RowShape(2, 32, 4), seed=1)]
    pool = Pool.from_method(SequentialMethod(), rows)
    want = pool_sizes(pool)
    half = storage.save_pool(pool.to(torch.bfloat16), tmp_path / "bf16.safetensors")
    assert storage.read_pool_metadata(half)["pool"]["sizes"] == want
