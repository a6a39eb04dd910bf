"""benchmarks/fashion_mnist.py: the configs it builds are the shipped ones, and its tables are the
hand-computed means, spreads, best-at-size values and verdicts of two made-up seeds."""

from __future__ import annotations

import argparse
import importlib
import math
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("fashion_mnist")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _args(**kw):
    return argparse.Namespace(**{"aux_epochs": 6, "finetune_epochs": 4, "train_images": 0, **kw})


def test_the_benchmark_builds_the_shipped_configs_with_only_its_budget_and_files_changed(bench):
    from stitchkit.engine.settings import load_config

    shipped = load_config(bench.CONFIGS["learngene-pool"])
    cfg = bench.build_config("learngene-pool", 2, _args(train_images=3000), **{
        "learngene.ancestry": "/x/a.safetensors", "learngene.distill.epochs": 6, "learngene.finetune.epochs": 4})
    assert cfg["train"] == {**shipped["train"], "seed": 2, "progress": False}
    assert cfg["data"] == {**shipped["data"], "train_images": 3000}
    assert cfg["learngene"] == {**shipped["learngene"], "ancestry": "/x/a.safetensors",
                                "distill": {**shipped["learngene"]["distill"], "epochs": 6},
                                "finetune": {**shipped["learngene"]["finetune"], "epochs": 4}}
    assert cfg["model"] == shipped["model"]


def _run(seed_offset: float) -> dict:
    """One made-up seed: three descendants; SN-Net has a configuration (99 params) between two of them."""
    names = ["r0[0:2]", "r0[0:1]+s0_1_1+r1[1:2]", "r1[0:2]"]
    o = seed_offset
    return {
        "params": dict(zip(names, [10, 50, 100])), "macs": dict(zip(names, [1e6, 2e6, 3e6])),
        "after_init": {"tm": dict(zip(names, [70 + o, 40 + o, 80 + o])), "ls": dict(zip(names, [70 + o, 60 + o, 80 + o]))},
        "learngene": {"tm": dict(zip(names, [72 + o, 65 + o, 85 + o])), "ls": dict(zip(names, [72 + o, 70 + o, 85 + o]))},
        "snnet": {"r0[0:2]": {"top1": 71 + o, "params": 10}, "r0[0:1]+r1[1:2]": {"top1": 66 + o, "params": 55},
                  "r0[0:1]+r1[1:2]x": {"top1": 90 + o, "params": 99}, "r1[0:2]": {"top1": 84 + o, "params": 100}},
        "snnetv2": {"r0[0:2]": {"top1": 60 + o, "params": 10}, "r1[0:2]": {"top1": 83 + o, "params": 100}},
        "alone": [{"name": names[0], "scratch": {"top1": 69 + o}, "distilled": {"top1": 70 + o}},
                  {"name": names[2], "scratch": {"top1": 80 + o}, "distilled": {"top1": 82 + 3 * o}}],
        "flops": {"lg-tm": 7e12, "lg-ls": 7e12, "snnet": 5e12, "snnetv2": 2e12, "alone": 6e12},
        "seconds": {"lg-tm": 600 + 60 * o, "lg-ls": 200, "snnet": 500, "snnetv2": 300, "alone": 400},
        "seed_seconds": 2000 + 60 * o, "seed_cpu_seconds": 1900,
    }


def test_columns_are_per_descendant_means_and_spreads_of_the_seeds(bench):
    text, table = bench.summarise([_run(0), _run(2)])
    spread = math.sqrt(2)  # stdev of (x, x + 2)
    narrow, middle, wide = table
    assert narrow["lg-ls"] == pytest.approx((73, spread)) and middle["init-tm"] == pytest.approx((41, spread))
    # SN-Net on the same blocks (its stitch layer named differently) and its best at or below the size
    assert middle["snnet-same-path"] == pytest.approx((67, spread))
    assert middle["snnet-best-at-size"] == pytest.approx((72, spread))  # of 10 params (71); 55 and 99 are above 50
    assert wide["snnet-best-at-size"] == pytest.approx((91, spread))    # 99 <= 100: the better configuration
    assert middle["snnetv2-same-path"] is None and middle["snnetv2-best-at-size"] == pytest.approx((61, spread))
    # alone runs exist for two descendants only; the distilled one's spread differs (82, 88)
    assert middle["alone-scratch"] is None and wide["alone-distilled"] == pytest.approx((85, math.sqrt(18)))
    assert "| `r1[0:2]` | 100 | 3.00 |" in text


def test_verdicts_count_a_difference_only_beyond_the_summed_spreads(bench):
    text, table = bench.summarise([_run(0), _run(2)])
    line = next(ln for ln in text.splitlines() if ln.startswith("- TM vs LS after fine-tuning"))
    # TM - LS: 0, -5, 0 with spreads sqrt(2) each: only the middle one (5 > 2.83) counts, LS ahead
    assert "first ahead on 0, behind on 1, within the spread on 2 of 3" in line and "+0.0~, -5.0, +0.0~" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("- Learngene Pool (LS) vs SN-Net's best"))
    # LS - best SN-Net at or below the size: 72-71=+1 and 70-71=-1 (within 2.83), 85-90=-5 (beyond)
    assert "first ahead on 0, behind on 1, within the spread on 2 of 3" in line and "+1.0~, -1.0~, -5.0" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("- Learngene Pool (LS) vs the same network distilled"))
    # only descendants with an alone run: 72 vs 70 (+2 < 2.83), 85 vs 85 (0)
    assert "within the spread on 2 of 2" in line


def test_costs_and_frontier(bench):
    runs = [_run(0), _run(2)]
    text, _ = bench.summarise(runs)
    assert "| Learngene Pool (TM): distillation + fine-tuning | 7.00e+12 | 660 ± 85 |" in text
    assert "One seed: 34.3 ± 1.4 min wall" in text
    # SN-Net's best at or below each of its own sizes: 10 -> 72, 55 -> 72 (66+1 < 71+1), 99 -> 91, 100 -> 91
    assert [(s, round(m, 6)) for s, (m, _) in bench.frontier(runs, "snnet")] == [(10, 72), (55, 72), (99, 91), (100, 91)]


def test_the_plot_is_written_with_the_baselines(bench, tmp_path):
    runs = [_run(0), _run(2)]
    _, table = bench.summarise(runs)
    bench.plot(table, runs, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp*"))
