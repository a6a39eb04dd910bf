"""Run records: ``resolved.json`` holds the whole config of a build and replays it; reruns that skip
phases append records, keep the original timings and leave an unchanged pool file untouched."""

from __future__ import annotations

import json

import torch

from stitchkit.apps.report import pool_info
from stitchkit.cli.build import build_command, run_build
from stitchkit.cli.main import main
from stitchkit.engine import load_config
from stitchkit.engine.runlog import phase_seconds, read_run_records
from stitchkit.core.registry import Registry
from stitchkit.io.storage import load_pool, read_pool_metadata

from helpers import TINY_LEARNGENE_BUILD

CONFIG = TINY_LEARNGENE_BUILD

PHASES = ["ancestry", "distill-row0", "distill-row1", "finetune-tm"]


def test_resolved_json_replays_a_learngene_build_and_reruns_keep_their_records(tmp_path, capsys):
    registry = Registry()
    toml = tmp_path / "lg.toml"
    toml.write_text(CONFIG)
    out = tmp_path / "run"
    pool_path = build_command(toml, out_dir=out, registry=registry)

    # one resolved.json for the build, holding the whole config (the ancestry phase did not overwrite it)
    resolved = json.loads((out / "resolved.json").read_text())
    assert resolved == {**load_config(toml), "out_dir": str(out)}
    assert resolved["method"] == "learngene-pool" and resolved["learngene"]["rows"] == "2x16:2,2x32:2"
    records = read_run_records(out)
    assert [(r["phase"], r["event"]) for r in records[:-1]] == [(p, "trained") for p in PHASES]
    assert records[-1]["event"] == "build" and records[-1]["pool"] == str(pool_path)
    trained = {r["phase"]: r["train_s"] for r in records[:-1]}
    assert all(s > 0 for s in trained.values())

    # a rerun of the finished build runs nothing, not even the evaluation: one record says the pool is unchanged
    stat = pool_path.stat()
    before = (out / "resolved.json").read_bytes()
    result = run_build(toml, out_dir=out, registry=registry)
    again = read_run_records(out)[len(records):]
    assert result.unchanged and result.pool == pool_path
    assert [(r["event"], r.get("unchanged")) for r in again] == [("build", True)]
    assert pool_path.stat().st_mtime_ns == stat.st_mtime_ns and (out / "resolved.json").read_bytes() == before
    assert phase_seconds(out) == trained
    # a pool file changed since (here: rewritten with other bytes) is built again; every phase is skipped
    pool_path.write_bytes(pool_path.read_bytes())
    assert run_build(toml, out_dir=out, registry=registry).unchanged  # same bytes: still the file written
    data = bytearray(pool_path.read_bytes())
    data[-1] ^= 1
    pool_path.write_bytes(bytes(data))
    n = len(read_run_records(out))
    assert not run_build(toml, out_dir=out, registry=registry).unchanged
    again = read_run_records(out)[n:]
    assert [(r["phase"], r["event"], r["train_s"]) for r in again[:-1]] == [(p, "skipped", trained[p]) for p in PHASES]
    assert again[-1]["event"] == "build" and "unchanged" not in again[-1]

    # the command ends with the table of every descendant and the best per size, and says the pool is unchanged
    assert main(["build", str(toml), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = pool_info(pool_path)["descendants"]
    assert all(f"{d['params']:>12,} {d['macs']:>14,} {d['top1']:>7.2f}" in text for d in rows)
    best = [d for d in rows if all(e["top1"] < d["top1"] for e in rows if (e["params"], e["macs"]) < (d["params"], d["macs"]))]
    listed = [line for line in text.split("best at or below each size")[1].splitlines() if line.startswith("  #")]
    assert [int(line.split()[0][1:]) for line in listed] == [d["index"] for d in sorted(best, key=lambda d: d["params"])]
    assert f"pool unchanged: {pool_path} is a finished build of this config" in text

    # resolved.json passed back as the config repeats the build exactly, in a fresh directory
    replay = build_command(out / "resolved.json", out_dir=tmp_path / "replay", registry=registry)
    a, b = load_pool(pool_path, registry), load_pool(replay, registry)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert read_pool_metadata(replay)["pool"]["evaluation"] == read_pool_metadata(pool_path)["pool"]["evaluation"]
