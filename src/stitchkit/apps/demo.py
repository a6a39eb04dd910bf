"""``stitchkit demo``: Learngene Pool (TM and LS stitches) vs SN-Net at equal storage, on real images, on a CPU.

One run trains a small 12-block ancestry on scikit-learn's handwritten
digits (``--data fashion-mnist``: on a subset of Fashion-MNIST, tested on its
official 10,000 test images), builds a Learngene Pool from it (two distilled 6-block rows, width
ratio 4) and fine-tunes it twice from the same distilled rows, once per stitch
initializer (TM, the paper's, and LS), next to an SN-Net of two anchors with
the same shapes trained from scratch (so every pool stores exactly the same
parameters) with the same budget. It evaluates every descendant, writes the
pool files, a markdown report that opens with a finding computed from the
run's own numbers and the spread the benchmark measured over seeds, and an
accuracy plot. Both methods are reached through the registry by name, like
any plugin.

After the ancestry the Learngene build runs here (its two rows distilled
together and its pools fine-tuned together, one ancestry forward per batch
for all of them: ``demo.together``) while SN-Net is built side by side in a
worker process (``demo.workers``: 2 by default on two or more
cores; each process one torch thread; the results do not depend on it).
Every phase is resumable: rerunning the same command continues where a killed
run stopped and skips finished phases.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch

from .cards import write_pool_card
from .compare import blocks_key, collect, compare_by_blocks, find_best, format_finding, markdown_report, plot_accuracy
from ..engine.config import section
from ..engine.idx import BASELINES
from ..engine.model import model_info
from ..engine.settings import load_config, resolve
from ..engine.standalone import train_model
from ..core.errors import ConfigError, StitchkitError
from ..io.files import OutputLock, copy_atomic, write_text_atomic
from ..core.registry import Registry, default_registry
from ..core.spec import parse_rows

METHODS = ("learngene-pool", "snnet")
#: Where the report links for why TM-initialised stitches start at chance at this scale.
TM_DOCS = "docs/learngene_pool.md#measured-the-digits-config-cpu, 'Why TM fails here'"


@dataclass
class DemoConfig:
    """The ``[demo]`` section."""

    #: Learngene Pool auxiliary rows = SN-Net anchor shapes (equal storage).
    rows: str = "6x16:1,6x64:4"
    ancestry_epochs: int = 25
    #: Learngene Pool distillation epochs per row = SN-Net anchor-training epochs per anchor.
    auxiliary_epochs: int = 15
    #: Fine-tuning epochs of every pool.
    finetune_epochs: int = 10
    finetune_lr: float = 5e-4
    #: Learngene Pool is distilled once and fine-tuned from each of these stitch initializers.
    learngene_initializers: list[str] = field(default_factory=lambda: ["tm", "ls"])
    #: Options per Learngene initializer, e.g. ``--set demo.learngene_initializers='["tm", "tm-ls"]'
    #: --set demo.learngene_initializer_args.tm-ls.ridge=0.05``.
    learngene_initializer_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    snnet_initializer: str = "ls"
    #: Options of the SN-Net initializer, e.g. ``--set demo.snnet_initializer_args.max_images=50``.
    snnet_initializer_args: dict[str, Any] = field(default_factory=dict)
    #: Processes building the pools after the ancestry (0: one per CPU core, at most 2; 1: all in this process).
    workers: int = 0
    #: Cap on optimizer steps per phase (0: none); the test suite's fast demo uses it.
    max_steps: int = 0
    #: Distil the Learngene rows together and fine-tune the Learngene pools together, the ancestry's forward
    #: computed once per batch for all of them (false: one at a time, one network in memory; the same pools).
    together: bool = True

    def validate(self, where: str = "demo") -> None:
        try:
            parse_rows(self.rows)
        except StitchkitError as exc:
            raise ConfigError(f"{where}.rows: {exc}") from None
        for key in ("ancestry_epochs", "auxiliary_epochs", "finetune_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps < 0:
            raise ConfigError(f"{where}.max_steps must be >= 0, got {self.max_steps}")
        if self.finetune_lr <= 0:
            raise ConfigError(f"{where}.finetune_lr must be positive, got {self.finetune_lr}")
        inits = self.learngene_initializers
        if not inits or len(set(inits)) != len(inits):
            raise ConfigError(f"{where}.learngene_initializers must name distinct initializers, got {inits}")
        if self.workers < 0:
            raise ConfigError(f"{where}.workers must be >= 0 (0: automatic), got {self.workers}")
        stray = sorted(set(self.learngene_initializer_args) - set(inits))
        if stray:
            raise ConfigError(f"{where}.learngene_initializer_args: {', '.join(stray)} is not in {where}.learngene_initializers "
                              f"{inits}; options are given per initializer, e.g. {where}.learngene_initializer_args.tm-ls.ridge")


@dataclass
class Job:
    """One build of one method: its pools' configs (several: built together from one distillation), its folder."""

    key: str
    label: str
    method: str
    #: Pool key -> build config.
    configs: dict[str, dict[str, Any]]
    out_dir: pathlib.Path


#: ``stitchkit demo --data NAME``: the shipped config of each data set.
DATA_CONFIGS = {"digits": "demo.toml", "fashion-mnist": "demo-fashion-mnist.toml"}


def default_config_path(data: str = "digits") -> pathlib.Path:
    if data not in DATA_CONFIGS:
        raise ConfigError(f"--data {data!r}: the demo ships configs for {', '.join(DATA_CONFIGS)}; use one, or --config FILE")
    return pathlib.Path(str(resources.files("stitchkit") / "configs" / DATA_CONFIGS[data]))


def data_name(source: str) -> str:
    return {"digits": "Digits", "fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}.get(source, source)


def describe_data(raw: Mapping[str, Any], ancestry_info: Mapping[str, Any]) -> str:
    """What the run trained and tested on, from the splits the ancestry's model file recorded."""
    data = raw["data"]
    splits = (ancestry_info.get("data") or {}).get("splits") or {}
    size = f"{data['img_size']}x{data['img_size']}"

    def count(split: str) -> str:
        rec = splits.get(split) or {}
        n = f"{rec['images']:,}" if "images" in rec else "?"
        return n + (f" (a stratified subset, seed {rec['seed']}, of {rec['subset_of']:,})" if "subset_of" in rec else "")

    if data["source"] == "digits":
        where = f"scikit-learn digits (8x8 upscaled to {size})"
    elif data["source"] in ("fashion-mnist", "mnist"):
        where = f"{data_name(data['source'])} (the official idx files, {size} grey)"
    else:
        where = f"{data['source']} ({size})"
    return (f"Data: {where}: {count('train')} training, {count('val')} validation and {count('test')} test images "
            f"(test: {'the official test set' if data['source'] in ('fashion-mnist', 'mnist') else 'a seeded stratified split'}); "
            "accuracy is top-1 on the test split.")


def trained_budget(info: Mapping[str, Any]) -> str:
    """``1,170 steps (15 epochs of 10,000 images)``: what a model file says was trained."""
    if "steps" not in info:
        return "an unrecorded budget"
    out = f"{info['steps']:,} steps"
    return out + (f" ({info['epochs']:g} epochs of {info['train_images']:,} images)" if "epochs" in info else "")


def expected_ranges_path() -> pathlib.Path:
    return pathlib.Path(str(resources.files("stitchkit") / "configs" / "demo_ranges.json"))


def pool_label(key: str) -> str:
    """``learngene-pool-tm`` -> ``Learngene Pool (TM)``; ``snnet`` -> ``SN-Net``."""
    if key == "snnet":
        return "SN-Net"
    return f"Learngene Pool ({key.removeprefix('learngene-pool-').upper()})"


def method_configs(config: dict[str, Any], demo: DemoConfig, ancestry: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The build configs: same data, same [train], same budgets, same teacher; one per Learngene
    initializer (``learngene-pool-<init>``, all sharing the distilled rows) and ``snnet``."""
    rows = parse_rows(demo.rows)
    patch = config["model"]["patch_size"]
    base = {"data": config["data"], "train": config["train"]}
    cap = {"max_steps": demo.max_steps} if demo.max_steps else {}
    phase = {"epochs": demo.auxiliary_epochs, **cap}
    finetune = {"epochs": demo.finetune_epochs, "lr": demo.finetune_lr, **cap}
    out: dict[str, dict[str, Any]] = {}
    for init in demo.learngene_initializers:
        out[f"learngene-pool-{init}"] = {
            "method": "learngene-pool",
            **base,
            "learngene": {
                "ancestry": str(ancestry),
                "rows": demo.rows,
                "initializer": init,
                "initializer_args": dict(demo.learngene_initializer_args.get(init, {})),
                "pool_file": f"pool-{init}.safetensors",
                "together": demo.together,
                "distill": phase,
                "finetune": finetune,
            },
        }
    out["snnet"] = {
        "method": "snnet",
        **base,
        "snnet": {
            "anchors": [{"shape": str(r), "patch_size": patch, "train": True} for r in rows],
            "initializer": demo.snnet_initializer,
            "initializer_args": dict(demo.snnet_initializer_args),
            "teacher": str(ancestry),
            "anchor_training": phase,
            "finetune": finetune,
        },
    }
    return out


def demo_jobs(config: dict[str, Any], demo: DemoConfig, ancestry: pathlib.Path, out: pathlib.Path) -> list[Job]:
    """The builds: one Learngene build of every initializer's pool (the rows distilled once, the pools
    fine-tuned side by side), then SN-Net."""
    configs = method_configs(config, demo, ancestry)
    learngene = {k: c for k, c in configs.items() if c["method"] == "learngene-pool"}
    inits = ", ".join(k.removeprefix("learngene-pool-").upper() for k in learngene)
    jobs = [Job("learngene-pool", f"Learngene Pool ({inits})", "learngene-pool", learngene, out / "learngene-pool")]
    jobs += [Job(k, pool_label(k), c["method"], {k: c}, out / k) for k, c in configs.items() if k not in learngene]
    return jobs


def _build(method: str, configs: Sequence[dict[str, Any]], out_dir: str, registry: Registry | None = None) -> tuple[list[str], float, float]:
    """Run one build of one or more pools (together where the method can); return (pool files, wall seconds, CPU seconds)."""
    registry = registry or default_registry()
    wall, cpu = time.perf_counter(), time.process_time()
    builder = registry.method(method)
    resolved = [resolve(c) for c in configs]
    together = getattr(builder, "build_together", None)
    if len(resolved) > 1 and callable(together):
        built = list(together(resolved, out_dir=pathlib.Path(out_dir), registry=registry))
    else:
        built = [builder.build(c, out_dir=pathlib.Path(out_dir), registry=registry) for c in resolved]
    return [str(b) for b in built], time.perf_counter() - wall, time.process_time() - cpu


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker process: ``python -c "import stitchkit.apps.demo as d; d.worker_main()" JOB.json THREADS``.

    Builds the job the JSON file describes and writes ``[pool files, wall s, CPU s]`` next to it
    (``.result``); a stitchkit error is one line on stderr and exit status 2.
    """
    job_file, threads = (sys.argv[1:] if argv is None else list(argv))[:2]
    torch.set_num_threads(int(threads))
    job = json.loads(pathlib.Path(job_file).read_text())
    try:
        result = _build(job["method"], job["configs"], job["out_dir"])
    except StitchkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_text_atomic(pathlib.Path(job_file + ".result"), json.dumps(result))
    return 0


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def run_jobs(jobs: Sequence[Job], workers: int, registry: Registry, scratch: pathlib.Path) -> dict[str, tuple[list[pathlib.Path], float, float]]:
    """Run ``jobs``: all here, in order (``workers`` 1); or the first job here while up to
    ``workers - 1`` worker processes build the others side by side.

    Workers are fresh interpreters (``subprocess``, not ``multiprocessing``: nothing of the
    caller's ``__main__`` is re-imported) that find the methods through entry points; only
    the jobs after the first go there, so one interpreter start-up (seconds of CPU) is paid
    per worker and none on the critical path.
    """
    done: dict[str, tuple[list[pathlib.Path], float, float]] = {}
    local = list(jobs) if workers <= 1 else list(jobs[:1])
    queue = [j for j in jobs if j not in local]
    running: dict[str, tuple[subprocess.Popen[bytes], Job, pathlib.Path]] = {}

    def launch() -> None:
        while queue and len(running) < workers - 1:
            job = queue.pop(0)
            scratch.mkdir(parents=True, exist_ok=True)
            spec = scratch / f"job-{job.key}.json"
            configs = [{**c, "train": {**c["train"], "progress": False}} for c in job.configs.values()]  # the bars here are this process's
            write_text_atomic(spec, json.dumps({"method": job.method, "configs": configs, "out_dir": str(job.out_dir)}))
            spec.with_name(spec.name + ".result").unlink(missing_ok=True)
            cmd = [sys.executable, "-c", "import stitchkit.apps.demo as d; raise SystemExit(d.worker_main())", str(spec), str(torch.get_num_threads())]
            running[job.key] = (subprocess.Popen(cmd), job, spec)
            _say(f"{job.label}: building in a worker process")

    def reap() -> None:
        for key, (proc, job, spec) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            result = spec.with_name(spec.name + ".result")
            if proc.returncode != 0 or not result.is_file():
                raise StitchkitError(f"demo: building {job.label} failed (worker exit status {proc.returncode}, its error is "
                                     f"printed above); rerun the same command to resume, or set demo.workers = 1")
            paths, wall, cpu = json.loads(result.read_text())
            done[key] = ([pathlib.Path(p) for p in paths], wall, cpu)
            _say(f"{job.label}: done in {wall:.0f} s")

    try:
        launch()
        for job in local:
            _say(f"{job.label}: building")
            paths, wall, cpu = _build(job.method, list(job.configs.values()), str(job.out_dir), registry)
            done[job.key] = ([pathlib.Path(p) for p in paths], wall, cpu)
            reap()
            launch()
        while running or queue:
            time.sleep(0.2)
            reap()
            launch()
    finally:
        for proc, _, _ in running.values():  # only on an error or an interrupt
            proc.terminate()
            proc.wait()
    return {job.key: done[job.key] for job in jobs}


# --------------------------------------------------------------------------- the expected spread
def load_expected_ranges(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The benchmark's per-seed top-1 of the demo's design (``configs/demo_ranges.json``)."""
    return dict(json.loads(pathlib.Path(path or expected_ranges_path()).read_text()))


def recipe_of(raw: Mapping[str, Any], demo: DemoConfig) -> dict[str, Any]:
    """What must match the benchmark's recipe for its ranges to apply to this run."""
    return {
        "data": {k: raw["data"].get(k) for k in ("source", "img_size", "in_chans")},
        "model": {k: raw["model"].get(k) for k in ("depth", "embed_dim", "num_heads", "patch_size")},
        "train": {k: raw["train"].get(k) for k in ("batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing")},
        "demo": {"rows": demo.rows, "ancestry_epochs": demo.ancestry_epochs, "auxiliary_epochs": demo.auxiliary_epochs,
                 "finetune_epochs": demo.finetune_epochs, "finetune_lr": demo.finetune_lr, "max_steps": demo.max_steps,
                 "snnet_initializer": demo.snnet_initializer, "snnet_initializer_args": dict(demo.snnet_initializer_args),
                 "learngene_initializer_args": {k: dict(v) for k, v in demo.learngene_initializer_args.items()}},
    }


def range_of(expected: Mapping[str, Any], key: str, blocks: str) -> tuple[float, float] | None:
    """(min, max) top-1 over the benchmark's seeds for pool ``key`` on ``blocks``, if it was measured."""
    values = expected["top1"].get(key, {}).get(blocks)
    return (min(values), max(values)) if values else None


# --------------------------------------------------------------------------- the report
def _runs(expected: Mapping[str, Any]) -> str:
    """``6 runs (3 seeds x 2 machines)``, or ``3 seeds``."""
    seeds, machines = expected["seeds"], expected.get("machines", [])
    if len(set(machines)) > 1:
        return f"{len(seeds)} runs ({len(set(seeds))} seeds x {len(set(machines))} machines)"
    return f"{len(seeds)} seeds"


def three_way_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], expected: Mapping[str, Any] | None) -> str:
    """Every Learngene descendant, each pool's top-1 on the same blocks, and the benchmark's range."""
    labels = [pool_label(k) for k in keys]
    head = ["descendant", "params"] + labels + ([f"{lab}: range over {_runs(expected)}" for lab in labels] if expected else [])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [f"`{r['blocks']}`", f"{r['params']:,}"]
        cells += ["-" if r["top1"][lab] is None else f"{r['top1'][lab]:.2f}" for lab in labels]
        if expected:
            for k in keys:
                rg = range_of(expected, k, r["blocks"])
                cells.append("-" if rg is None else f"{rg[0]:.1f}-{rg[1]:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intro(infos: Mapping[str, dict[str, Any]], keys: Sequence[str], expected: Mapping[str, Any] | None, recipe_matches: bool) -> str:
    """The report's opening: the finding, the three-way table, the expected spread and why TM starts at chance."""
    reference = next(pool_label(k) for k in keys if k != "snnet")
    rows = compare_by_blocks(infos, reference)
    lines = ["## Finding", "", format_finding(find_best(rows), rows), ""]
    lines += [
        "Top-1 (%) on the test split of every Learngene Pool descendant and of the SN-Net configuration with the "
        "same blocks (equal storage: every pool stores the same parameters):",
        "",
        three_way_table(rows, keys, expected if recipe_matches else None),
        "",
    ]
    if expected and recipe_matches:
        lines += [
            f"**Expected spread.** {expected['summary']} The ranges above are the lowest and highest top-1 of "
            f"{_runs(expected)} ({expected['source']}). A run on another machine gives different numbers (CPU "
            "kernels differ between machines, so float training does), scattered like these runs: expect them "
            "about within these ranges, which are a guide from a few runs, not a bound.",
            "",
        ]
    elif expected:
        lines += ["**Expected spread.** This run changed the demo's recipe, so the benchmark's ranges over seeds "
                  f"({expected['source']}) do not apply to it.", ""]
    if any(k.endswith("-tm") for k in keys):
        lines += [
            "**Why TM starts at chance here.** TM maps a narrow row's features back through the transpose of its "
            "distillation matrix into the ancestry's feature space and hands them to the wide row, but the wide "
            "row was distilled on its last block only, so its intermediate features are not the ancestry's and "
            "the stitched descendants start near chance (10%) until fine-tuning repairs them; LS fits each stitch "
            f"to the features the next row actually computes (see {TM_DOCS}).",
            "",
        ]
    return "\n".join(lines)


def run_demo(
    out_dir: str | os.PathLike[str] = "stitchkit-demo",
    overrides: Sequence[str] = (),
    *,
    config_path: str | os.PathLike[str] | None = None,
    data: str = "digits",
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Run the demo on ``data`` (its shipped config, unless ``config_path``); return a summary (files written, storage, phase times)."""
    start = time.perf_counter()
    registry = registry or default_registry()
    for name in METHODS:
        registry.get("method", name)  # fail before any training if a method plugin is missing
    out = pathlib.Path(out_dir)
    raw = load_config(config_path or default_config_path(data), overrides)
    demo = section(raw, "demo", DemoConfig)  # validated
    for init in demo.learngene_initializers:  # unknown components or options stop here, before training
        registry.check("initializer", init, demo.learngene_initializer_args.get(init, {}),
                       where=f"demo.learngene_initializer_args.{init}")
    registry.check("initializer", demo.snnet_initializer, demo.snnet_initializer_args, where="demo.snnet_initializer_args")
    # the whole config, every pool's included, before the first phase
    for cfg in method_configs(raw, demo, out / "ancestry" / "ancestry.safetensors").values():
        if "snnet" in cfg:  # the teacher is the ancestry this demo trains first; the check must not need it
            cfg["snnet"]["teacher"] = "largest-anchor"
        registry.method(cfg["method"]).check_config(resolve(cfg), registry=registry)
    with OutputLock(out, "stitchkit demo"):
        return _run_demo(out, raw, demo, registry, start)


def _run_demo(out: pathlib.Path, raw: dict[str, Any], demo: DemoConfig, registry: Registry, start: float) -> dict[str, Any]:
    workers = demo.workers or min(2, os.cpu_count() or 1)
    phases: list[tuple[str, float]] = []

    t0, cpu0 = time.perf_counter(), time.process_time()
    cap = {"max_steps": demo.max_steps} if demo.max_steps else {}
    ancestry_cfg = {k: raw[k] for k in ("data", "model", "train")}
    ancestry_cfg["train"] = {**raw["train"], "epochs": demo.ancestry_epochs, **cap}
    _say("training the ancestry")
    ancestry = train_model(resolve(ancestry_cfg), out / "ancestry", name="ancestry")
    phases.append((f"train the {raw['model']['depth']}-block ancestry", time.perf_counter() - t0))
    ancestry_cpu = time.process_time() - cpu0

    jobs = demo_jobs(raw, demo, ancestry, out)
    built = run_jobs(jobs, workers, registry, out / ".workers")
    pools: dict[str, pathlib.Path] = {}
    for job in jobs:
        paths, wall, _ = built[job.key]
        for key, path in zip(job.configs, paths):
            pools[key] = out / f"{key}.safetensors"
            copy_atomic(path, pools[key])
            write_pool_card(pools[key])  # its model card beside it, as `stitchkit build` writes
        inits = " and ".join(c.get("learngene", c.get("snnet", {})).get("initializer", "").upper() for c in job.configs.values())
        if job.method == "snnet":
            what = f"train anchors, {inits} init, fine-tune, evaluate"
        elif len(job.configs) > 1 and demo.together:
            what = f"distil rows together, {inits} init, fine-tune the pools together, evaluate"
        else:
            what = f"distil rows, {inits} init, fine-tune, evaluate"
        phases.append((f"{job.label}: {what}", wall))

    t0 = time.perf_counter()
    infos = collect({pool_label(k): p for k, p in pools.items()})
    storages = {k: v["storage_params"] for k, v in infos.items()}
    if len(set(storages.values())) != 1:
        raise StitchkitError(f"the demo's pools should store equal parameters, got {storages}")
    source = raw["data"]["source"]
    baselines = BASELINES.get(source, [])
    plot = plot_accuracy(infos, out / "accuracy.png", title=f"{data_name(source)}: accuracy of every descendant",
                         references=[(label.split(" (")[0], top1) for label, top1 in baselines])
    expected = load_expected_ranges()
    same_data = expected["recipe"]["data"]["source"] == source
    matches = recipe_of(raw, demo) == expected["recipe"]
    keys = list(pools)
    ancestry_info = model_info(ancestry)
    test = (ancestry_info.get("evaluation") or {}).get("test") or {}
    cap_note = f", each phase capped at {demo.max_steps} steps" if demo.max_steps else ""
    notes = [
        describe_data(raw, ancestry_info),
        f"Ancestry: {raw['model']['depth']} blocks, width {raw['model']['embed_dim']}, patch {raw['model']['patch_size']}, "
        f"trained {trained_budget(ancestry_info)}"
        + (f": test top-1 {test['top1']:.2f} %." if test else "."),
        f"Rows / anchors: {demo.rows}; {demo.auxiliary_epochs} epochs of distillation (Learngene Pool, once for "
        f"every initializer) or training from scratch (SN-Net) each; {demo.finetune_epochs} fine-tuning epochs per "
        f"pool{cap_note}.",
        ("The Learngene rows were distilled together and its pools fine-tuned together: one ancestry forward per "
         "batch for all of them, the same weights as one at a time (docs/training.md)." if demo.together else
         "The Learngene rows were distilled, and its pools fine-tuned, one at a time (demo.together = false)."),
        f"Stitch initialisation: {', '.join(i.upper() for i in demo.learngene_initializers)} (Learngene Pool, one pool "
        f"each), {demo.snnet_initializer.upper()} (SN-Net).",
        "Every pool stores exactly the same number of parameters (rows + stitch layers).",
        *([f"Published {data_name(source)} results for reference (test top-1, from the README of Debian's "
           "dataset-fashion-mnist package; dashed lines in the plot): "
           + "; ".join(f"{label} {top1:g} %" for label, top1 in baselines) + "."] if baselines else []),
        *([] if same_data else [f"No benchmark ranges over seeds exist for the demo on {data_name(source)}; the "
                                "tables show this one run."]),
        *(["Every method over 3 seeds on the full training set (SN-Netv2 and networks trained alone included): "
           "`python benchmarks/fashion_mnist.py` (benchmarks/RESULTS.md, \"Every method over 3 seeds\")."]
          if source == "fashion-mnist" else []),
        "Each descendant against the same network trained on its own (from scratch and distilled from the "
        "ancestry, at the pool's fine-tuning epochs and at an equal share of the pool's training FLOPs) is "
        "measured by `python benchmarks/equal_compute.py` (benchmarks/RESULTS.md, \"What a pool buys\"); it is "
        "not repeated here because training every descendant alone would double the demo's time. "
        "`stitchkit cost` prices any build config the same way.",
        (f"After the ancestry, SN-Net was built in a worker process side by side with the Learngene builds, so the "
         "phase times overlap; the total is the run's wall time." if workers > 1 else
         "Every phase ran in this process, one after another."),
    ]
    phases.append(("report and plot", time.perf_counter() - t0))
    total = time.perf_counter() - start
    report = markdown_report(
        infos, title=f"stitchkit demo on {data_name(source)}: Learngene Pool (TM and LS stitches) vs SN-Net at equal storage",
        phases=phases, notes=notes, plot=plot.name, intro=intro(infos, keys, expected if same_data else None, matches), total_seconds=total,
    )
    write_text_atomic(out / "report.md", report)
    summary = {
        "out_dir": str(out),
        "ancestry": str(ancestry),
        "pools": {k: str(v) for k, v in pools.items()},
        "report": str(out / "report.md"),
        "plot": str(plot),
        "storage_params": storages,
        "phases": [{"phase": p, "seconds": s} for p, s in phases],
        #: CPU seconds (user + sys) of each phase in the process that ran it (interpreter start-up of workers excluded)
        "cpu_seconds": {"ancestry": ancestry_cpu, **{k: built[k][2] for k in built}},
        "workers": workers,
        "total_seconds": total,
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


__all__ = ["DemoConfig", "blocks_key", "demo_jobs", "method_configs", "run_demo"]
