"""Method comparison on digits: the Learngene Pool paper's claims at small scale, over seeds.

    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 9 [--out benchmarks/results/compare]
    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 --finetune-sweep 10 30 50 --out benchmarks/results/methods6

For each seed: one 12-block ancestry (shared by both designs). For each design
(two rows of 6 or 9 blocks, widths 16 and 64, ratio 4 like DeiT's 192/768):

* Learngene Pool, distilled once; stitch layers initialised with TM, TM-pinv,
  LS and random and evaluated right after initialisation; then fine-tuned
  from TM, TM-pinv and LS with prediction distillation, and from TM and LS
  without it (the distilled rows are shared by every variant);
* SN-Net at equal storage: two anchors of the same shapes trained from
  scratch for as many epochs as the distillation, LS init, the same
  fine-tuning budget and the same teacher (SN-Net's hard distillation);
* with ``--snnetv2``: SN-Netv2 on SN-Net's trained anchors (the same files),
  two-way routes, LS-initialised low-rank stitch layers (``--snnetv2-rank``),
  ``ros`` sampling, the same fine-tuning budget and teacher;
* with ``--lg-two-way``: Learngene Pool (TM, fine-tuned) with two-way routes
  on the same distilled rows;
* with ``--stitch-variants``: the options measured against their defaults,
  SN-Netv2 with full-rank stitch layers (LS, trained whole) and Learngene Pool
  (LS) with two-way routes or with low-rank stitch layers.

    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 --snnetv2 --lg-two-way --stitch-variants --out benchmarks/results/methods6

``--recipe authors`` builds the Learngene Pool variants with the paper authors'
code's settings instead of the paper text's (docs/learngene_pool.md, "The
authors' recipe"): alpha 0.1, L_pred averaged over batch x classes,
sliding-window paths, drop path 0.1 in the rows, the distillation lr scaled by
batch / 512 and a constant fine-tuning lr 10x lower. They go to
``lg<depth>-authors-<variant>`` beside the paper recipe's folders and reuse the
same ancestry and SN-Net's results (SN-Net's recipe is the same under both), so

    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 --out OUT
    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 --recipe authors --out OUT

cost the second time only the distillation and the fine-tuning. The EMA of
weights the authors keep is left out here: DeiT's decay 0.99996 averages over
~25,000 steps, and a digits phase takes a few hundred.

``--finetune-sweep E1 E2 ...`` instead fine-tunes TM, TM-pinv, LS (with
distillation) and SN-Net for each number of epochs (the paper's 50 included) at
``--finetune-lr``, reusing the distilled rows and trained anchors, and prints
per descendant the top-1 at each budget and whether TM catches up with LS.

Per descendant the table shows mean and standard deviation of top-1 over the
seeds. A difference is called only when it exceeds the sum of the two
standard deviations. Results: JSON and CSV next to --out, and a markdown
summary printed at the end. Every phase is resumable (rerun to continue).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import statistics
import time
from typing import Any

from stitchkit.io import storage
from stitchkit.engine.settings import resolve
from stitchkit.engine.standalone import train_model
from stitchkit.core.registry import Registry
from stitchkit.core.spec import Path

BASE = {
    "data": {"source": "digits", "img_size": 16, "in_chans": 1},
    "model": {"depth": 12, "embed_dim": 64, "num_heads": 4, "patch_size": 4},
    "train": {"batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "warmup_epochs": 1,
              "label_smoothing": 0.0, "eval_every": 0, "progress": False},
}
LG_VARIANTS = [  # (name, initializer, fine-tuning distillation)
    ("tm", "tm", True),
    ("tm-pinv", "tm-pinv", True),
    ("ls", "ls", True),
    ("tm-nodistill", "tm", False),
    ("ls-nodistill", "ls", False),
]
AFTER_INIT = ["tm", "tm-pinv", "ls", "random"]
#: Other runs compared per descendant: (key in a run's results, column prefix).
OTHERS = [("snnet", "snnet"), ("snnetv2", "snnetv2"), ("lg_two_way", "lg-two-way"),
          ("snnetv2_full_rank", "snnetv2-full-rank"), ("lg_two_way_ls", "lg-two-way-ls"), ("lg_ls_low_rank", "lg-ls-low-rank")]


def _link_distilled(base: pathlib.Path, variant: pathlib.Path) -> None:
    """Share the distilled rows: a finished phase with the same identity is skipped by the engine."""
    variant.mkdir(parents=True, exist_ok=True)
    for phase in base.glob("distill-row*"):
        target = variant / phase.name
        if not target.exists():
            os.symlink(phase.resolve(), target)


RECIPES = ("paper", "authors")


def authors_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[learngene]`` keys the authors' code sets differently from the paper text, at digits scale
    (each with its source in docs/learngene_pool.md): alpha, L_pred reduction, paths, drop path in the
    rows, the distillation lr scaled linearly by batch / 512, the fine-tuning lr 10x lower (5e-5 vs
    5e-4), constant (no warm-up, no decay). Not applied: the fine-tuning batch of 32 (a quarter of the
    distillation's; it would quadruple the steps) and the EMA (see the module docstring)."""
    return {"alpha": 0.1, "prediction_reduction": "mean", "paths": "sliding-window",
            "design_args": {"drop_path_rate": 0.1},
            "distill": {"epochs": args.aux_epochs, "lr": BASE["train"]["lr"] * BASE["train"]["batch_size"] / 512},
            "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr / 10, "min_lr": args.finetune_lr / 10,
                         "warmup_epochs": 0.0}}


def run_seed_design(out: pathlib.Path, seed: int, depth: int, args: argparse.Namespace, registry: Registry,
                    variants: list[tuple[str, str, bool]] = LG_VARIANTS) -> dict[str, Any]:
    train = {**BASE["train"], "seed": seed}
    seed_dir = out / f"seed{seed}"
    ancestry = train_model(resolve({**BASE, "train": {**train, "epochs": args.ancestry_epochs}}), seed_dir / "ancestry")
    rows = f"{depth}x16:1,{depth}x64:4"
    results: dict[str, Any] = {"seed": seed, "depth": depth, "learngene": {}, "after_init": {},
                               "recipe": getattr(args, "recipe", "paper")}
    finetune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr}
    authors = results["recipe"] == "authors"
    recipe = authors_recipe(args) if authors else {"distill": {"epochs": args.aux_epochs}, "finetune": finetune}
    prefix = f"lg{depth}-authors" if authors else f"lg{depth}"
    base_dir = seed_dir / f"{prefix}-tm"
    for name, init, distill in variants:
        vdir = seed_dir / f"{prefix}-{name}"
        if vdir != base_dir:
            _link_distilled(base_dir, vdir)
        cfg = {"method": "learngene-pool", **BASE, "train": train, "learngene": {
            "ancestry": str(ancestry), "rows": rows, "initializer": init, "finetune_distillation": distill,
            "compare_initializers": AFTER_INIT if vdir == base_dir else [], **recipe}}
        t0 = time.perf_counter()
        pool = registry.method("learngene-pool").build(resolve(cfg), out_dir=vdir, registry=registry)
        meta = storage.read_pool_metadata(pool)["pool"]
        results["learngene"][name] = {p: e["top1"] for p, e in meta["evaluation"].items()}
        results.setdefault("seconds", {})[f"learngene-{name}"] = time.perf_counter() - t0
        if vdir == base_dir:
            results["after_init"] = meta["info"]["learngene"]["after_init"]
            results["params"] = {p: e["params"] for p, e in meta["evaluation"].items()}
    if authors:  # SN-Net's recipe is the same under both: its results come from the paper recipe's run (main)
        return results
    cfg = {"method": "snnet", **BASE, "train": train, "snnet": {
        "anchors": [{"shape": s, "patch_size": 4, "train": True} for s in rows.split(",")],
        "initializer": "ls", "teacher": str(ancestry), "evaluate_after_init": True,
        "anchor_training": {"epochs": args.aux_epochs}, "finetune": finetune}}
    t0 = time.perf_counter()
    pool = registry.method("snnet").build(resolve(cfg), out_dir=seed_dir / f"snnet{depth}", registry=registry)
    meta = storage.read_pool_metadata(pool)["pool"]
    results["snnet"] = by_blocks(meta)
    results["seconds"]["snnet"] = time.perf_counter() - t0
    run_extras(results, seed_dir, depth, args, registry, ancestry)
    return results


SWEEP_VARIANTS = [v for v in LG_VARIANTS if v[2]]  # tm, tm-pinv, ls: with fine-tuning distillation


def _link_phases(base: pathlib.Path, variant: pathlib.Path, pattern: str) -> None:
    """Share finished phases (distilled rows, trained anchors): the engine skips a finished phase with the same identity."""
    variant.mkdir(parents=True, exist_ok=True)
    for phase in base.glob(pattern):
        target = variant / phase.name
        if not target.exists():
            os.symlink(phase.resolve(), target)


def run_sweep(out: pathlib.Path, seed: int, depth: int, budgets: list[int], args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    """Fine-tune TM, TM-pinv, LS and SN-Net for each number of epochs in ``budgets`` (shared rows and anchors)."""
    base = run_seed_design(out, seed, depth, args, registry, [v for v in LG_VARIANTS if v[0] == "tm"])
    seed_dir = out / f"seed{seed}"
    ancestry = seed_dir / "ancestry" / "ancestry.safetensors"
    train = {**BASE["train"], "seed": seed}
    rows = f"{depth}x16:1,{depth}x64:4"
    result: dict[str, Any] = {"seed": seed, "depth": depth, "params": base["params"], "budgets": {}}
    for epochs in budgets:
        finetune = {"epochs": epochs, "lr": args.finetune_lr}
        entry: dict[str, Any] = {"learngene": {}}
        for name, init, _ in SWEEP_VARIANTS:
            vdir = seed_dir / f"lg{depth}-{name}-ft{epochs}"
            _link_phases(seed_dir / f"lg{depth}-tm", vdir, "distill-row*")
            cfg = {"method": "learngene-pool", **BASE, "train": train, "learngene": {
                "ancestry": str(ancestry), "rows": rows, "initializer": init,
                "distill": {"epochs": args.aux_epochs}, "finetune": finetune}}
            pool = registry.method("learngene-pool").build(resolve(cfg), out_dir=vdir, registry=registry)
            entry["learngene"][name] = {p: e["top1"] for p, e in storage.read_pool_metadata(pool)["pool"]["evaluation"].items()}
        sdir = seed_dir / f"snnet{depth}-ft{epochs}"
        _link_phases(seed_dir / f"snnet{depth}", sdir, "anchor[0-9]*")
        cfg = {"method": "snnet", **BASE, "train": train, "snnet": {
            "anchors": [{"shape": s, "patch_size": 4, "train": True} for s in rows.split(",")],
            "initializer": "ls", "teacher": str(ancestry),
            "anchor_training": {"epochs": args.aux_epochs}, "finetune": finetune}}
        pool = registry.method("snnet").build(resolve(cfg), out_dir=sdir, registry=registry)
        entry["snnet"] = {blocks_key(p): e["top1"] for p, e in storage.read_pool_metadata(pool)["pool"]["evaluation"].items()}
        result["budgets"][str(epochs)] = entry
        print(f"seed {seed}, {epochs} fine-tuning epochs: done", flush=True)
    return result


def summarise_sweep(runs: list[dict[str, Any]], budgets: list[int]) -> str:
    params = runs[0]["params"]
    names = sorted(params, key=lambda n: params[n])
    cols = [(f"{v}@{e}", v, e) for e in budgets for v in [*(n for n, _, _ in SWEEP_VARIANTS), "snnet"]]

    def value(r: dict[str, Any], v: str, e: int, name: str) -> float | None:
        b = r["budgets"][str(e)]
        return b["snnet"].get(blocks_key(name)) if v == "snnet" else b["learngene"][v][name]

    lines = [f"### Fine-tuning budget sweep, rows {runs[0]['depth']}x16:1, {runs[0]['depth']}x64:4 "
             f"({len(runs)} seeds, lr as given: top-1 mean ± std)", "",
             "| descendant | params | " + " | ".join(c for c, _, _ in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    stats: dict[tuple[str, str], tuple[float, float] | None] = {}
    for name in names:
        cells = []
        for col, v, e in cols:
            vals = [value(r, v, e, name) for r in runs]
            ms = mean_std([x for x in vals if x is not None]) if all(x is not None for x in vals) else None
            stats[(name, col)] = ms
            cells.append("-" if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f}")
        lines.append(f"| `{name}` | {params[name]:,} | " + " | ".join(cells) + " |")
    lines.append("")
    for e in budgets:
        votes = [_beats(stats[(n, f"tm@{e}")], stats[(n, f"ls@{e}")]) for n in names]
        gap = statistics.fmean(stats[(n, f"tm@{e}")][0] - stats[(n, f"ls@{e}")][0] for n in names)  # type: ignore[index]
        lines.append(f"- {e} epochs: TM better than LS on {votes.count(1)}, LS better on {votes.count(-1)}, within the "
                     f"spread on {votes.count(0)} of {len(names)} descendants; mean TM - LS {gap:+.1f} points")
    return "\n".join(lines) + "\n"


def run_extras(results: dict[str, Any], seed_dir: pathlib.Path, depth: int, args: argparse.Namespace,
               registry: Registry, ancestry: pathlib.Path) -> bool:
    """The optional SN-Netv2 and two-way Learngene Pool runs missing from ``results``; True if any ran."""
    train = {**BASE["train"], "seed": results["seed"]}
    rows = f"{depth}x16:1,{depth}x64:4"
    finetune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr}
    ran = False
    if getattr(args, "snnetv2", False) and "snnetv2" not in results:
        cfg = {"method": "snnetv2", **BASE, "train": train, "snnetv2": {
            **snnetv2_section(seed_dir, depth, rows, ancestry, finetune, args.snnetv2_rank), "evaluate_after_init": True}}
        t0 = time.perf_counter()
        pool = registry.method("snnetv2").build(resolve(cfg), out_dir=seed_dir / f"snnetv2-{depth}", registry=registry)
        meta = storage.read_pool_metadata(pool)["pool"]
        results["snnetv2"] = by_blocks(meta)
        results["seconds"]["snnetv2"] = time.perf_counter() - t0
        ran = True
    if getattr(args, "lg_two_way", False) and "lg_two_way" not in results:
        vdir = seed_dir / f"lg{depth}-tm-two-way"
        _link_distilled(seed_dir / f"lg{depth}-tm", vdir)
        cfg = {"method": "learngene-pool", **BASE, "train": train, "learngene": {
            "ancestry": str(ancestry), "rows": rows, "initializer": "tm", "paths": "two-way",
            "distill": {"epochs": args.aux_epochs}, "finetune": finetune}}
        t0 = time.perf_counter()
        pool = registry.method("learngene-pool").build(resolve(cfg), out_dir=vdir, registry=registry)
        meta = storage.read_pool_metadata(pool)["pool"]
        results["lg_two_way"] = by_blocks(meta)
        results["seconds"]["learngene-tm-two-way"] = time.perf_counter() - t0
        ran = True
    if getattr(args, "stitch_variants", False):
        ran = _stitch_variants(results, seed_dir, depth, args, registry, ancestry, train, rows, finetune) or ran
    return ran


def snnetv2_section(seed_dir: pathlib.Path, depth: int, rows: str, ancestry: pathlib.Path, finetune: dict[str, Any],
                    rank: int) -> dict[str, Any]:
    """SN-Netv2 on this seed's trained SN-Net anchors: LS stitch layers of rank ``rank`` (0: full rank),
    ``ros`` sampling, the same teacher and fine-tuning budget as the other pools."""
    anchors = [{"shape": s, "patch_size": 4, "train": False,
                "checkpoint": str(seed_dir / f"snnet{depth}" / "anchors" / f"anchor{i}.safetensors")}
               for i, s in enumerate(rows.split(","))]
    return {"anchors": anchors, "initializer": "ls", "teacher": str(ancestry), "stitch_rank": rank,
            "sampler_args": {"gap_fraction": 0.08}, "finetune": finetune}


def _stitch_variants(results: dict[str, Any], seed_dir: pathlib.Path, depth: int, args: argparse.Namespace,
                     registry: Registry, ancestry: pathlib.Path, train: dict[str, Any], rows: str,
                     finetune: dict[str, Any]) -> bool:
    """``--stitch-variants``: SN-Netv2 with full-rank stitch layers, and Learngene Pool (LS) with two-way
    routes or with low-rank stitch layers, each on the same anchors / distilled rows as the defaults."""
    ran = False
    builds = []
    if "snnetv2_full_rank" not in results:
        builds.append(("snnetv2_full_rank", "snnetv2", f"snnetv2-{depth}-full-rank", None,
                       {"snnetv2": snnetv2_section(seed_dir, depth, rows, ancestry, finetune, 0)}))
    for key, extra in (("lg_two_way_ls", {"paths": "two-way"}), ("lg_ls_low_rank", {"stitch_rank": args.snnetv2_rank})):
        if key not in results:
            builds.append((key, "learngene-pool", f"lg{depth}-{key.removeprefix('lg_').replace('_', '-')}", seed_dir / f"lg{depth}-tm", {
                "learngene": {"ancestry": str(ancestry), "rows": rows, "initializer": "ls", **extra,
                              "distill": {"epochs": args.aux_epochs}, "finetune": finetune}}))
    for key, method, dirname, distilled, section in builds:
        vdir = seed_dir / dirname
        if distilled is not None:
            _link_distilled(distilled, vdir)
        t0 = time.perf_counter()
        pool = registry.method(method).build(resolve({"method": method, **BASE, "train": train, **section}),
                                             out_dir=vdir, registry=registry)
        meta = storage.read_pool_metadata(pool)["pool"]
        results[key] = by_blocks(meta)
        results["seconds"][key] = time.perf_counter() - t0
        ran = True
    return ran


def by_blocks(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A pool's evaluated top-1 and deployed size per path, keyed by :func:`blocks_key`. Sizes come from
    the file's ``sizes`` (as exported: a low-rank stitch merges into a plain layer), not from the
    evaluation records, which counted the low-rank updates too before issue 15's fix."""
    sizes = {Path.from_json(p).name: s["params"] for p, s in zip(meta["paths"], meta["sizes"]["descendants"])}
    return {blocks_key(n): {"top1": e["top1"], "params": sizes[n]} for n, e in meta["evaluation"].items()}


def blocks_key(name: str) -> str:
    """A path's blocks without its stitch-layer names (the methods name their layers differently)."""
    return "+".join(t for t in name.split("+") if t.startswith("r"))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]], depth: int) -> tuple[str, list[dict[str, Any]]]:
    runs = [r for r in runs if r["depth"] == depth]
    names = list(runs[0]["learngene"]["tm"])
    params = runs[0]["params"]
    table = []
    for name in sorted(names, key=lambda n: params[n]):
        row: dict[str, Any] = {"depth": depth, "descendant": name, "params": params[name]}
        for init in AFTER_INIT:
            row[f"init-{init}"] = mean_std([r["after_init"][init][name] for r in runs])
        for variant, _, _ in LG_VARIANTS:
            row[f"lg-{variant}"] = mean_std([r["learngene"][variant][name] for r in runs])
        for key, col in OTHERS:
            if not all(key in r for r in runs):
                continue
            # the other method's configuration with the same path (same blocks, same stitch position)
            sn = [r[key].get(blocks_key(name), {}).get("top1") for r in runs]
            row[f"{col}-same-path"] = mean_std(sn) if all(v is not None for v in sn) else None
            # and its best configuration with at most this many params
            best = [max((v["top1"] for v in r[key].values() if v["params"] <= params[name]), default=None) for r in runs]
            row[f"{col}-best-at-size"] = mean_std(best) if all(v is not None for v in best) else None
        table.append(row)
    cols = [f"init-{i}" for i in AFTER_INIT] + [f"lg-{v}" for v, _, _ in LG_VARIANTS]
    cols += [f"{col}-{kind}" for key, col in OTHERS if all(key in r for r in runs) for kind in ("same-path", "best-at-size")]
    lines = [f"### rows {depth}x16:1, {depth}x64:4 ({len(runs)} seeds: top-1 mean ± std)", "",
             "| descendant | params | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for row in table:
        cells = ["-" if row[c] is None else f"{row[c][0]:.1f} ± {row[c][1]:.1f}" for c in cols]
        lines.append(f"| `{row['descendant']}` | {row['params']:,} | " + " | ".join(cells) + " |")
    lines += ["", claims(table, cols), ""]
    return "\n".join(lines), table


def _beats(a: tuple[float, float] | None, b: tuple[float, float] | None) -> int:
    """+1 if a > b beyond the spread, -1 if b > a beyond it, 0 otherwise."""
    if a is None or b is None:
        return 0
    margin = a[1] + b[1]
    return 1 if a[0] - b[0] > margin else (-1 if b[0] - a[0] > margin else 0)


def claims(table: list[dict[str, Any]], cols: list[str]) -> str:
    out = []
    for a, b, what in [
        ("snnetv2-same-path", "snnet-same-path", "SN-Netv2 vs SN-Net, same path, same anchors"),
        ("snnetv2-best-at-size", "snnet-best-at-size", "SN-Netv2 vs SN-Net, best configuration at or below the same size"),
        ("lg-tm", "snnetv2-same-path", "Learngene Pool (TM) vs SN-Netv2, same path"),
        ("lg-tm", "snnetv2-best-at-size", "Learngene Pool (TM) vs SN-Netv2's best configuration at or below the same size"),
        ("lg-ls", "snnetv2-same-path", "Learngene Pool (LS) vs SN-Netv2, same path"),
        ("lg-ls", "snnetv2-best-at-size", "Learngene Pool (LS) vs SN-Netv2's best configuration at or below the same size"),
        ("lg-two-way-best-at-size", "lg-tm", "Learngene Pool two-way (best at size) vs one-way (TM)"),
        ("snnetv2-same-path", "snnetv2-full-rank-same-path", "SN-Netv2 low-rank vs full-rank stitch layers, same path"),
        ("lg-two-way-ls-same-path", "lg-ls", "Learngene Pool (LS) two-way vs one-way, same path"),
        ("lg-two-way-ls-best-at-size", "lg-ls", "Learngene Pool (LS) two-way (best at size) vs one-way"),
        ("lg-ls-low-rank-same-path", "lg-ls", "Learngene Pool (LS) low-rank vs full-rank stitch layers, same path"),
        ("lg-tm", "snnet-same-path", "Learngene Pool (TM, fine-tuned) vs SN-Net, same path, equal storage"),
        ("lg-tm", "snnet-best-at-size", "Learngene Pool (TM) vs SN-Net's best configuration at or below the same size"),
        ("lg-ls", "snnet-same-path", "Learngene Pool (LS, fine-tuned) vs SN-Net, same path, equal storage"),
        ("lg-ls", "snnet-best-at-size", "Learngene Pool (LS) vs SN-Net's best configuration at or below the same size"),
        ("init-tm", "init-ls", "TM vs LS right after initialisation"),
        ("init-tm-pinv", "init-tm", "TM-pinv vs TM right after initialisation"),
        ("lg-tm", "lg-ls", "TM vs LS after fine-tuning (with distillation)"),
        ("lg-tm-pinv", "lg-tm", "TM-pinv vs TM after fine-tuning"),
        ("lg-tm", "lg-tm-nodistill", "TM fine-tuning with vs without distillation"),
        ("lg-ls", "lg-ls-nodistill", "LS fine-tuning with vs without distillation"),
    ]:
        if a not in cols or b not in cols:
            continue
        votes = [_beats(r[a], r[b]) for r in table]
        out.append(f"- {what}: first better on {votes.count(1)}, second better on {votes.count(-1)}, "
                   f"within the spread on {votes.count(0)} of {len(votes)} descendants")
    return "\n".join(out)


def with_snnet(result: dict[str, Any], paper_cache: pathlib.Path) -> dict[str, Any]:
    """An authors'-recipe result with SN-Net's results taken from the paper recipe's run of the same seed
    (SN-Net is trained the same way under both recipes), when that run has finished."""
    if "snnet" not in result and paper_cache.is_file():
        return {**result, "snnet": json.loads(paper_cache.read_text())["snnet"]}
    return result


def diff_runs(before: list[dict[str, Any]], after: list[dict[str, Any]], depth: int) -> str:
    """Per descendant, each column's mean top-1 in ``before`` -> ``after`` (columns both have)."""
    (_, old), (_, new) = summarise(before, depth), summarise(after, depth)
    old_by = {r["descendant"]: r for r in old}
    cols = [c for c in new[0] if c not in ("depth", "descendant", "params") and c in old[0]]
    lines = ["| descendant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in new:
        o = old_by.get(r["descendant"])
        cells = ["-" if o is None or o[c] is None or r[c] is None else f"{o[c][0]:.1f} -> {r[c][0]:.1f}" for c in cols]
        lines.append(f"| `{r['descendant']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The demo's recipe (src/stitchkit/configs/demo.toml) that these runs repeat; the demo shows the
#: ranges only when its own config matches it.
DEMO_RECIPE = {
    "data": {"source": "digits", "img_size": 16, "in_chans": 1},
    "model": {k: BASE["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")},
    "train": {k: BASE["train"][k] for k in ("batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing")},
}


DEMO_POOLS = ("learngene-pool-tm", "learngene-pool-ls", "snnet")


def demo_runs(dirs: list[str]) -> list[dict[str, Any]]:
    """Top-1 per descendant (keyed by blocks) of ``stitchkit demo`` output folders: the same recipe,
    run by the demo itself (``--set train.seed=N``) on another machine."""
    out = []
    for d in dirs:
        meta = {k: storage.read_pool_metadata(pathlib.Path(d) / f"{k}.safetensors")["pool"] for k in DEMO_POOLS}
        seed = meta["learngene-pool-tm"]["info"]["provenance"]["config"]["train"]["seed"]
        summary = json.loads((pathlib.Path(d) / "summary.json").read_text())
        out.append({"dir": pathlib.Path(d).name, "seed": seed, "cpu_seconds": summary.get("cpu_seconds"),
                    "top1": {k: {blocks_key(p): e["top1"] for p, e in m["evaluation"].items()} for k, m in meta.items()}})
    return out


def demo_ranges(saved: dict[str, Any], other: dict[str, Any] | None = None, depth: int = 6) -> dict[str, Any]:
    """Per-run top-1 of the demo's three pools (LG-TM, LG-LS, SN-Net on the same blocks) for
    ``src/stitchkit/configs/demo_ranges.json``: this benchmark's seeds, then ``other["runs"]`` (the demo
    run on a second machine), with a summary of the claims over seeds."""
    args, runs = saved["args"], [r for r in saved["runs"] if r["depth"] == depth]
    recipe = {**DEMO_RECIPE, "demo": {
        "rows": f"{depth}x16:1,{depth}x64:4", "ancestry_epochs": args["ancestry_epochs"],
        "auxiliary_epochs": args["aux_epochs"], "finetune_epochs": args["finetune_epochs"],
        "finetune_lr": args["finetune_lr"], "max_steps": 0, "snnet_initializer": "ls",
        "snnet_initializer_args": {}, "learngene_initializer_args": {}}}
    names = sorted(runs[0]["learngene"]["tm"], key=lambda n: runs[0]["params"][n])
    extra = (other or {}).get("runs", [])
    top1: dict[str, dict[str, list[float]]] = {k: {} for k in DEMO_POOLS}
    for name in names:
        key = blocks_key(name)
        top1["learngene-pool-tm"][key] = [r["learngene"]["tm"][name] for r in runs]
        top1["learngene-pool-ls"][key] = [r["learngene"]["ls"][name] for r in runs]
        top1["snnet"][key] = [r["snnet"][key]["top1"] for r in runs]
        for k in DEMO_POOLS:
            top1[k][key] += [r["top1"][k][key] for r in extra]
    _, table = summarise(saved["runs"], depth)
    votes = {v: [_beats(row[f"lg-{v}"], row["snnet-same-path"]) for row in table] for v in ("tm", "ls")}
    wide = table[-1]
    gap = wide["lg-ls"][0] - wide["snnet-same-path"][0]
    n = len(table)
    summary = (
        f"Over {len(runs)} seeds the benchmark put Learngene Pool with LS stitches ahead of SN-Net on the same "
        f"blocks on {votes['ls'].count(1)} of {n} descendants and behind on {votes['ls'].count(-1)} (a difference "
        f"counts when it exceeds the two standard deviations); with TM stitches it was behind on "
        f"{votes['tm'].count(-1)} and ahead on {votes['tm'].count(1)}. The distilled wide row alone averaged "
        f"{gap:.1f} points above SN-Net's anchor of the same shape."
    )
    if extra:
        stitched = [blocks_key(nm) for nm in names[1:-1]]
        pairs = [(r, b) for r in extra for b in stitched]
        ls_ahead = sum(r["top1"]["learngene-pool-ls"][b] > r["top1"]["snnet"][b] for r, b in pairs)
        tm_behind = sum(r["top1"]["learngene-pool-tm"][b] < r["top1"]["snnet"][b] for r, b in pairs)
        summary += (f" On a second machine, {len(extra)} seeds of the demo itself put LS ahead of SN-Net on "
                    f"{ls_ahead} of {len(pairs)} stitched descendants and TM behind on {tm_behind} of {len(pairs)}.")
    source = "benchmarks/results/compare/runs.json" + (", demo-runs.json" if extra else "") + " (benchmarks/RESULTS.md)"
    return {"source": source, "seeds": [r["seed"] for r in runs] + [r["seed"] for r in extra],
            "machines": ["benchmark machine"] * len(runs) + ["second machine"] * len(extra),
            "recipe": recipe, "summary": summary, "top1": top1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--designs", type=int, nargs="+", default=[6, 9], help="row depths")
    p.add_argument("--ancestry-epochs", type=int, default=25)
    p.add_argument("--aux-epochs", type=int, default=15, help="distillation epochs = SN-Net anchor epochs")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--out", default="benchmarks/results/compare")
    p.add_argument("--recipe", choices=RECIPES, default="paper", help="Learngene Pool's recipe: the paper text's "
                   "or the authors' code's (see the module docstring)")
    p.add_argument("--demo-ranges", metavar="JSON", help="only write the demo's expected ranges from OUT/runs.json to JSON "
                   "(src/stitchkit/configs/demo_ranges.json), with OUT/demo-runs.json when present, and stop")
    p.add_argument("--demo-runs", nargs="+", metavar="DIR", help="with --demo-ranges: first record these `stitchkit demo` "
                   "output folders (the demo run with --set train.seed=N on another machine) in OUT/demo-runs.json")
    p.add_argument("--diff", nargs=2, metavar=("BEFORE", "AFTER"), help="only print, per descendant of --designs, the "
                   "mean top-1 of each column in two runs.json files (e.g. before and after a change) and stop")
    p.add_argument("--finetune-sweep", type=int, nargs="+", metavar="EPOCHS",
                   help="instead: fine-tune TM, TM-pinv, LS and SN-Net for each of these numbers of epochs")
    p.add_argument("--snnetv2", action="store_true", help="also SN-Netv2 on SN-Net's anchors")
    p.add_argument("--snnetv2-rank", type=int, default=8, help="rank of SN-Netv2's low-rank stitch layers")
    p.add_argument("--lg-two-way", action="store_true", help="also Learngene Pool (TM) with two-way routes")
    p.add_argument("--stitch-variants", action="store_true", help="also SN-Netv2 with full-rank stitch layers and "
                   "Learngene Pool (LS) with two-way routes or with low-rank stitch layers (rank --snnetv2-rank)")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.demo_runs:
        (out / "demo-runs.json").write_text(json.dumps({"runs": demo_runs(args.demo_runs)}, indent=1) + "\n")
    if args.demo_ranges:
        other = out / "demo-runs.json"
        ranges = demo_ranges(json.loads((out / "runs.json").read_text()), json.loads(other.read_text()) if other.is_file() else None)
        pathlib.Path(args.demo_ranges).write_text(json.dumps(ranges, indent=1) + "\n")
        return 0
    if args.diff:
        print(diff_runs(*(json.loads(pathlib.Path(f).read_text())["runs"] for f in args.diff), args.designs[0]))
        return 0
    registry = Registry()
    if args.finetune_sweep:
        return sweep_main(out, args, registry)
    runs = []
    for seed in args.seeds:
        for depth in args.designs:
            cache = out / f"seed{seed}" / (f"results-{depth}-authors.json" if args.recipe == "authors" else f"results-{depth}.json")
            if cache.is_file():
                result = json.loads(cache.read_text())
                ancestry = train_model(resolve({**BASE, "train": {**BASE["train"], "seed": seed, "epochs": args.ancestry_epochs}}),
                                       out / f"seed{seed}" / "ancestry") if (args.snnetv2 or args.lg_two_way or args.stitch_variants) else None
                if ancestry is not None and run_extras(result, out / f"seed{seed}", depth, args, registry, ancestry):
                    cache.write_text(json.dumps(result, indent=2))
                runs.append(with_snnet(result, out / f"seed{seed}" / f"results-{depth}.json"))
                continue
            result = run_seed_design(out, seed, depth, args, registry)
            cache.write_text(json.dumps(result, indent=2))
            runs.append(with_snnet(result, out / f"seed{seed}" / f"results-{depth}.json"))
            print(f"seed {seed}, rows of {depth}: done ({sum(result['seconds'].values()):.0f} s)", flush=True)
    report, rows = [], []
    for depth in args.designs:
        text, table = summarise(runs, depth)
        report.append(text)
        rows += table
    text = "\n".join(report)
    print(text)
    tag = "-authors" if args.recipe == "authors" else ""
    (out / f"summary{tag}.md").write_text(text)
    (out / f"runs{tag}.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    with open(out / f"summary{tag}.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = [k for k in rows[0] if k not in ("depth", "descendant", "params")]
        w.writerow(["depth", "descendant", "params", *[f"{c}-{s}" for c in cols for s in ("mean", "std")]])
        for r in rows:
            w.writerow([r["depth"], r["descendant"], r["params"],
                        *[x for c in cols for x in (r[c] if r[c] is not None else ("", ""))]])
    return 0


def sweep_main(out: pathlib.Path, args: argparse.Namespace, registry: Registry) -> int:
    start = time.perf_counter()
    text, every = [], []
    for depth in args.designs:
        runs = []
        for seed in args.seeds:
            cache = out / f"seed{seed}" / f"sweep-{depth}-{'-'.join(map(str, args.finetune_sweep))}.json"
            if cache.is_file():
                runs.append(json.loads(cache.read_text()))
                continue
            result = run_sweep(out, seed, depth, args.finetune_sweep, args, registry)
            cache.write_text(json.dumps(result, indent=2))
            runs.append(result)
        text.append(summarise_sweep(runs, args.finetune_sweep))
        every += runs
    report = "\n".join(text) + f"\nWall time of this invocation: {time.perf_counter() - start:.0f} s\n"
    print(report)
    (out / "sweep.md").write_text(report)
    (out / "sweep-runs.json").write_text(json.dumps({"args": vars(args), "runs": every}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
