"""A fast demo (tiny budget): every output exists and parses, the report's numbers are the pool
files' own metadata, its finding is what its table says, and the shipped benchmark ranges are the
benchmark's own runs."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
import torch

from stitchkit.io import storage
from stitchkit.apps.compare import blocks_key, compare_by_blocks, find_best, format_finding
from stitchkit.apps.demo import load_expected_ranges, run_demo
from stitchkit.core.errors import ConfigError
from stitchkit.apps.report import pool_info

FAST = ["demo.max_steps=2", "demo.ancestry_epochs=1", "demo.auxiliary_epochs=1", "demo.finetune_epochs=1",
        "train.progress=false", "demo.rows=\"3x16:1,3x64:4\"", "model.depth=6",
        "demo.snnet_initializer_args.max_images=20"]
POOLS = {"learngene-pool-tm": "Learngene Pool (TM)", "learngene-pool-ls": "Learngene Pool (LS)", "snnet": "SN-Net"}
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, registry):
    out = tmp_path_factory.mktemp("demo")
    # two processes (SN-Net in a worker): the path `stitchkit demo` takes on a 2-core machine
    return run_demo(out, [*FAST, "demo.workers=2"], registry=registry), out


def test_every_output_exists_and_parses(demo):
    summary, out = demo
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["workers"] == 2 and list(summary["pools"]) == list(POOLS)
    for key in POOLS:
        meta = storage.read_pool_metadata(out / f"{key}.safetensors")
        assert meta["pool"]["method"] == key.removesuffix("-tm").removesuffix("-ls")
        card = (out / f"{key}.md").read_text()  # its model card, naming the file and its metadata digest
        assert card.startswith("---\nlibrary_name: stitchkit\n") and f"# {key}.safetensors" in card
        assert meta["metadata_sha256"] in card
        assert len(meta["pool"]["evaluation"]) == len(meta["pool"]["paths"])  # every descendant evaluated
    inits = {k: storage.read_pool_metadata(out / f"{k}.safetensors")["pool"]["info"]["learngene"]["initializer"]
             for k in ("learngene-pool-tm", "learngene-pool-ls")}
    assert inits == {"learngene-pool-tm": "tm", "learngene-pool-ls": "ls"}
    # one distillation for both Learngene pools: the LS build found the rows finished and skipped them
    runs = sorted(p.parent.name for p in (out / "learngene-pool").glob("*/run.json"))
    assert runs == ["distill-row0", "distill-row1", "finetune-ls", "finetune-tm"]
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    assert matplotlib.image.imread(out / "accuracy.png").shape[2] in (3, 4)
    assert (out / "ancestry" / "ancestry.safetensors").is_file()
    # component options reach the builds (--set demo.<method>_initializer_args...)
    components = {m: storage.read_pool_metadata(out / f"{m}.safetensors")["pool"]["info"]["components"] for m in POOLS}
    assert components["snnet"]["initializer"] == {"name": "ls", "options": {"max_images": 20}}
    assert components["learngene-pool-tm"]["initializer"] == {"name": "tm", "options": {}}
    assert components["learngene-pool-ls"]["initializer"] == {"name": "ls", "options": {}}


def test_one_process_builds_the_same_pools(demo, tmp_path, registry):
    """SN-Net built in a worker process side by side, or everything here in order: the same pool files."""
    from safetensors.torch import load_file

    _, out = demo
    run_demo(tmp_path, [*FAST, "demo.workers=1"], registry=registry)
    for key in POOLS:
        a, b = load_file(out / f"{key}.safetensors"), load_file(tmp_path / f"{key}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
        evaluation = [storage.read_pool_metadata(d / f"{key}.safetensors")["pool"]["evaluation"] for d in (out, tmp_path)]
        assert evaluation[0] == evaluation[1]


def test_equal_storage(demo):
    summary, out = demo
    sizes = {pool_info(out / f"{k}.safetensors")["storage_params"] for k in POOLS}
    assert len(sizes) == 1 and set(summary["storage_params"].values()) == sizes


def _tables(report: str) -> dict[str, str]:
    return {s.split("\n", 1)[0]: s for s in re.split(r"^## ", report, flags=re.M)[1:]}


def test_report_numbers_are_the_pool_files_metadata(demo):
    summary, out = demo
    report = (out / "report.md").read_text()
    sections = _tables(report)
    for key, label in POOLS.items():
        rows = {}
        for line in sections[label].splitlines():
            m = re.match(r"\| (\d+) \| .*`(.+?)` \| (\d+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|", line)
            if m:
                rows[m.group(2)] = (int(m.group(4).replace(",", "")), int(m.group(5).replace(",", "")), float(m.group(6)))
        meta = storage.read_pool_metadata(out / f"{key}.safetensors")["pool"]
        assert rows, f"no descendant rows parsed from the {label} table"
        assert len(rows) == len(meta["paths"])
        for name, (params, macs, top1) in rows.items():
            stored = meta["evaluation"][name]
            assert top1 == pytest.approx(stored["top1"], abs=0.005)
            assert params == stored["params"] and macs == stored["macs"]
    for phase in summary["phases"]:
        assert f"| {phase['phase']} | {phase['seconds']:.1f} |" in report
    assert f"| **total** | **{summary['total_seconds']:.1f}** |" in report
    # the pool against each descendant trained alone is the benchmark's job; the report says where
    assert "`python benchmarks/equal_compute.py`" in report and (pathlib.Path(__file__).parents[1] / "benchmarks" / "equal_compute.py").is_file()


def _three_way(report: str) -> list[dict]:
    """The report's three-way table, parsed back."""
    rows = []
    for line in _tables(report)["Finding"].splitlines():
        m = re.match(r"\| `(.+?)` \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows.append({"blocks": m.group(1), "params": int(m.group(2).replace(",", "")),
                         "top1": dict(zip(POOLS.values(), map(float, m.group(3, 4, 5))))})
    return rows


def _check_finding(text: str, rows: list[dict]) -> None:
    """Recompute the finding from the table by hand and hold each sentence of ``text`` to it."""
    groups = {"narrowest": rows[:1], "in between": rows[1:-1], "widest": rows[-1:]}
    for group, members in groups.items():
        means = {k: sum(r["top1"][k] for r in members) / len(members) for k in rows[0]["top1"]}
        order = sorted(means.values(), reverse=True)
        sentence = next(p for p in text.split("; on the ") if group in p.split(":")[0])
        if order[0] - order[1] < 0.1:  # a tie at the table's precision
            continue
        best = max(means, key=means.get)
        m = re.search(r"\*\*(.+?)\*\* ([\d.]+)% \(\+([\d.]+) points over (.+?)[,;]", sentence)
        assert m, sentence
        assert m.group(1) == best, f"{group}: the finding names {m.group(1)}, the table says {best}: {sentence}"
        assert float(m.group(2)) == pytest.approx(means[best], abs=0.051)
        assert float(m.group(3)) == pytest.approx(order[0] - order[1], abs=0.06)
        if group == "in between":
            wins = sum(r["top1"][best] >= max(r["top1"].values()) for r in members)
            assert f"best on {wins} of {len(members)}" in sentence


def test_the_finding_is_what_the_table_says(demo):
    _, out = demo
    report = (out / "report.md").read_text()
    rows = _three_way(report)
    assert [r["blocks"] for r in rows] == ["r0[0:3]", "r0[0:2]+r1[2:3]", "r0[0:1]+r1[1:3]", "r1[0:3]"]
    for r in rows:  # the table is the pool files' evaluation, matched by blocks
        for key, label in POOLS.items():
            ev = storage.read_pool_metadata(out / f"{key}.safetensors")["pool"]["evaluation"]
            match = [e["top1"] for name, e in ev.items() if blocks_key(name) == r["blocks"]]
            assert len(match) == 1 and r["top1"][label] == pytest.approx(match[0], abs=0.005)
    finding = _tables(report)["Finding"].split("\n\n")[1]
    _check_finding(finding, rows)
    assert "docs/learngene_pool.md#" in report
    assert "changed the demo's recipe" in report  # the fast demo is not the benchmark's recipe: no ranges shown


def _rows(values: dict[str, list[float]]) -> list[dict]:
    return [{"descendant": f"d{i}", "blocks": f"r{i}", "params": 10 * (i + 1), "macs": 0,
             "top1": {k: v[i] for k, v in values.items()}} for i in range(len(next(iter(values.values()))))]


def test_finding_by_hand():
    rows = _rows({"TM": [37.6, 33.4, 36.2, 22.8, 21.5, 12.8, 76.0],
                  "LS": [38.7, 48.5, 56.0, 55.7, 62.4, 69.1, 75.8],
                  "SN": [41.0, 37.6, 47.9, 42.3, 47.9, 47.1, 58.2]})
    narrow, middle, wide = find_best(rows)
    assert (narrow.best, narrow.runner_up) == ("SN", "LS") and narrow.margin == pytest.approx(41.0 - 38.7)
    # in between: means over the 5 stitched descendants, by hand
    assert middle.size == 5 and middle.best == "LS" and middle.wins == 5
    assert middle.means["LS"] == pytest.approx(291.7 / 5) and middle.means["SN"] == pytest.approx(222.8 / 5)
    assert middle.margin == pytest.approx((291.7 - 222.8) / 5)
    assert (wide.best, wide.runner_up, wide.wins) == ("TM", "LS", 1) and wide.margin == pytest.approx(0.2)
    text = format_finding([narrow, middle, wide], rows)
    _check_finding(text, rows)
    assert "**SN** 41.0% (+2.3 points over LS" in text and "**LS** 58.3% (+13.8 points over SN, best on 5 of 5" in text
    assert "**TM** 76.0% (+0.2 points over LS" in text
    ties = find_best(_rows({"A": [10.0, 5.0], "B": [10.0, 6.0]}))
    assert ties[0].margin == 0 and "a tie between A and B at 10.0%" in format_finding(ties, _rows({"A": [10.0, 5.0], "B": [10.0, 6.0]}))
    with pytest.raises(ValueError, match="at least a narrowest and a widest"):
        find_best(rows[:1])


def test_a_wrong_finding_fails_the_check():
    rows = _rows({"Learngene Pool (TM)": [30.0, 20.0, 70.0], "Learngene Pool (LS)": [31.0, 50.0, 69.0], "SN-Net": [35.0, 40.0, 55.0]})
    text = format_finding(find_best(rows), rows)
    _check_finding(text, rows)
    for wrong in (text.replace("**SN-Net** 35.0%", "**Learngene Pool (LS)** 35.0%"), text.replace("+10.0 points", "+12.0 points")):
        assert wrong != text
        with pytest.raises(AssertionError):
            _check_finding(wrong, rows)


def test_shipped_ranges_are_the_benchmark_runs():
    """configs/demo_ranges.json holds exactly the per-seed top-1 of benchmarks/results/compare/runs.json,
    then of the demo's own runs on a second machine (demo-runs.json)."""
    expected = load_expected_ranges()
    compare = ROOT / "benchmarks" / "results" / "compare"
    saved = json.loads((compare / "runs.json").read_text())
    runs = [r for r in saved["runs"] if r["depth"] == 6]
    demo_runs = json.loads((compare / "demo-runs.json").read_text())["runs"]
    assert expected["seeds"] == [r["seed"] for r in runs] + [r["seed"] for r in demo_runs] == [0, 1, 2, 0, 1, 2]
    for name in runs[0]["learngene"]["tm"]:
        key = blocks_key(name)
        for pool, bench in (("learngene-pool-tm", lambda r: r["learngene"]["tm"][name]),
                            ("learngene-pool-ls", lambda r: r["learngene"]["ls"][name]),
                            ("snnet", lambda r: r["snnet"][key]["top1"])):
            assert expected["top1"][pool][key] == [bench(r) for r in runs] + [r["top1"][pool][key] for r in demo_runs]
    a = saved["args"]
    assert expected["recipe"]["demo"] == {"rows": "6x16:1,6x64:4", "ancestry_epochs": a["ancestry_epochs"],
                                          "auxiliary_epochs": a["aux_epochs"], "finetune_epochs": a["finetune_epochs"],
                                          "finetune_lr": a["finetune_lr"], "max_steps": 0, "snnet_initializer": "ls",
                                          "snnet_initializer_args": {}, "learngene_initializer_args": {}}


def test_the_shipped_demo_config_is_the_benchmark_recipe():
    from stitchkit.apps.demo import DemoConfig, default_config_path, recipe_of
    from stitchkit.engine.config import section
    from stitchkit.engine.settings import load_config

    raw = load_config(default_config_path())
    assert recipe_of(raw, section(raw, "demo", DemoConfig)) == load_expected_ranges()["recipe"]


def test_bad_demo_config(tmp_path):
    with pytest.raises(ConfigError, match="demo.learngene_initializers must name distinct"):
        run_demo(tmp_path, ["demo.learngene_initializers=[\"tm\", \"tm\"]"])
    with pytest.raises(ConfigError, match="demo.workers must be >= 0"):
        run_demo(tmp_path, ["demo.workers=-1"])


def test_unknown_initializer_option_stops_before_training(tmp_path, registry):
    with pytest.raises(ConfigError, match=r"demo.learngene_initializer_args.tm: initializer 'tm' has no option 'ridge'"):
        run_demo(tmp_path, [*FAST, "demo.learngene_initializer_args.tm.ridge=0.1"], registry=registry)
    with pytest.raises(ConfigError, match=r"demo.learngene_initializer_args: tm-ls is not in demo.learngene_initializers"):
        run_demo(tmp_path, [*FAST, "demo.learngene_initializer_args.tm-ls.ridge=0.1"], registry=registry)
    assert not (tmp_path / "ancestry").exists()  # refused before the ancestry trained
