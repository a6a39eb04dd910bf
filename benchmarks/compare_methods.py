"""Method comparison on digits: the Learngene Pool paper's claims at small scale, over seeds.

    python benchmarks/compare_methods.py --seeds 0 1 2 --designs 6 9 [--out benchmarks/results/compare]

For each seed: one 12-block ancestry (shared by both designs). For each design
(two rows of 6 or 9 blocks, widths 16 and 64, ratio 4 like DeiT's 192/768):

* Learngene Pool, distilled once; stitch layers initialised with TM, TM-pinv,
  LS and random and evaluated right after initialisation; then fine-tuned
  from TM, TM-pinv and LS with prediction distillation, and from TM and LS
  without it (the distilled rows are shared by every variant);
* SN-Net at equal storage: two anchors of the same shapes trained from
  scratch for as many epochs as the distillation, LS init, the same
  fine-tuning budget and the same teacher (SN-Net's hard distillation).

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

from stitchkit import storage
from stitchkit.engine.config import resolve
from stitchkit.engine.model import train_model
from stitchkit.registry import Registry

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


def _link_distilled(base: pathlib.Path, variant: pathlib.Path) -> None:
    """Share the distilled rows: a finished phase with the same identity is skipped by the engine."""
    variant.mkdir(parents=True, exist_ok=True)
    for phase in base.glob("distill-row*"):
        target = variant / phase.name
        if not target.exists():
            os.symlink(phase.resolve(), target)


def run_seed_design(out: pathlib.Path, seed: int, depth: int, args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    train = {**BASE["train"], "seed": seed}
    seed_dir = out / f"seed{seed}"
    ancestry = train_model(resolve({**BASE, "train": {**train, "epochs": args.ancestry_epochs}}), seed_dir / "ancestry")
    rows = f"{depth}x16:1,{depth}x64:4"
    results: dict[str, Any] = {"seed": seed, "depth": depth, "learngene": {}, "after_init": {}}
    finetune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr}
    base_dir = seed_dir / f"lg{depth}-tm"
    for name, init, distill in LG_VARIANTS:
        vdir = seed_dir / f"lg{depth}-{name}"
        if vdir != base_dir:
            _link_distilled(base_dir, vdir)
        cfg = {"method": "learngene-pool", **BASE, "train": train, "learngene": {
            "ancestry": str(ancestry), "rows": rows, "initializer": init, "finetune_distillation": distill,
            "compare_initializers": AFTER_INIT if vdir == base_dir else [],
            "distill": {"epochs": args.aux_epochs}, "finetune": finetune}}
        t0 = time.perf_counter()
        pool = registry.method("learngene-pool").build(resolve(cfg), out_dir=vdir, registry=registry)
        meta = storage.read_pool_metadata(pool)["pool"]
        results["learngene"][name] = {p: e["top1"] for p, e in meta["evaluation"].items()}
        results.setdefault("seconds", {})[f"learngene-{name}"] = time.perf_counter() - t0
        if vdir == base_dir:
            results["after_init"] = meta["info"]["learngene"]["after_init"]
            results["params"] = {p: e["params"] for p, e in meta["evaluation"].items()}
    cfg = {"method": "snnet", **BASE, "train": train, "snnet": {
        "anchors": [{"shape": s, "patch_size": 4, "train": True} for s in rows.split(",")],
        "initializer": "ls", "teacher": str(ancestry), "evaluate_after_init": True,
        "anchor_training": {"epochs": args.aux_epochs}, "finetune": finetune}}
    t0 = time.perf_counter()
    pool = registry.method("snnet").build(resolve(cfg), out_dir=seed_dir / f"snnet{depth}", registry=registry)
    meta = storage.read_pool_metadata(pool)["pool"]
    results["snnet"] = {blocks_key(p): {"top1": e["top1"], "params": e["params"]} for p, e in meta["evaluation"].items()}
    results["seconds"]["snnet"] = time.perf_counter() - t0
    return results


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
        # SN-Net at equal storage: its configuration with the same path (same blocks, same stitch position)
        sn = [r["snnet"].get(blocks_key(name), {}).get("top1") for r in runs]
        row["snnet-same-path"] = mean_std(sn) if all(v is not None for v in sn) else None
        # and its best configuration with at most this many params
        best = [max((v["top1"] for v in r["snnet"].values() if v["params"] <= params[name]), default=None) for r in runs]
        row["snnet-best-at-size"] = mean_std(best) if all(v is not None for v in best) else None
        table.append(row)
    cols = [f"init-{i}" for i in AFTER_INIT] + [f"lg-{v}" for v, _, _ in LG_VARIANTS] + ["snnet-same-path", "snnet-best-at-size"]
    lines = [f"### rows {depth}x16:1, {depth}x64:4 ({len(runs)} seeds: top-1 mean ± std)", "",
             "| descendant | params | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for row in table:
        cells = ["-" if row[c] is None else f"{row[c][0]:.1f} ± {row[c][1]:.1f}" for c in cols]
        lines.append(f"| `{row['descendant']}` | {row['params']:,} | " + " | ".join(cells) + " |")
    lines += ["", claims(table), ""]
    return "\n".join(lines), table


def _beats(a: tuple[float, float] | None, b: tuple[float, float] | None) -> int:
    """+1 if a > b beyond the spread, -1 if b > a beyond it, 0 otherwise."""
    if a is None or b is None:
        return 0
    margin = a[1] + b[1]
    return 1 if a[0] - b[0] > margin else (-1 if b[0] - a[0] > margin else 0)


def claims(table: list[dict[str, Any]]) -> str:
    out = []
    for a, b, what in [
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
        votes = [_beats(r[a], r[b]) for r in table]
        out.append(f"- {what}: first better on {votes.count(1)}, second better on {votes.count(-1)}, "
                   f"within the spread on {votes.count(0)} of {len(votes)} descendants")
    return "\n".join(out)


#: The demo's recipe (src/stitchkit/configs/demo.toml) that these runs repeat; the demo shows the
#: ranges only when its own config matches it.
DEMO_RECIPE = {
    "data": {"source": "digits", "img_size": 16, "in_chans": 1},
    "model": {k: BASE["model"][k] for k in ("depth", "embed_dim", "num_heads", "patch_size")},
    "train": {k: BASE["train"][k] for k in ("batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing")},
}


def demo_ranges(saved: dict[str, Any], depth: int = 6) -> dict[str, Any]:
    """Per-seed top-1 of the demo's three pools (LG-TM, LG-LS, SN-Net on the same blocks) for
    ``src/stitchkit/configs/demo_ranges.json``, with a one-sentence summary of the claims over seeds."""
    args, runs = saved["args"], [r for r in saved["runs"] if r["depth"] == depth]
    recipe = {**DEMO_RECIPE, "demo": {
        "rows": f"{depth}x16:1,{depth}x64:4", "ancestry_epochs": args["ancestry_epochs"],
        "auxiliary_epochs": args["aux_epochs"], "finetune_epochs": args["finetune_epochs"],
        "finetune_lr": args["finetune_lr"], "max_steps": 0, "snnet_initializer": "ls"}}
    names = sorted(runs[0]["learngene"]["tm"], key=lambda n: runs[0]["params"][n])
    top1: dict[str, dict[str, list[float]]] = {"learngene-pool-tm": {}, "learngene-pool-ls": {}, "snnet": {}}
    for name in names:
        key = blocks_key(name)
        top1["learngene-pool-tm"][key] = [r["learngene"]["tm"][name] for r in runs]
        top1["learngene-pool-ls"][key] = [r["learngene"]["ls"][name] for r in runs]
        top1["snnet"][key] = [r["snnet"][key]["top1"] for r in runs]
    _, table = summarise(saved["runs"], depth)
    votes = {v: [_beats(row[f"lg-{v}"], row["snnet-same-path"]) for row in table] for v in ("tm", "ls")}
    wide = table[-1]
    gap = wide["lg-ls"][0] - wide["snnet-same-path"][0]
    n = len(table)
    summary = (
        f"Over {len(runs)} seeds the same design put Learngene Pool with LS stitches ahead of SN-Net on the same "
        f"blocks on {votes['ls'].count(1)} of {n} descendants and behind on {votes['ls'].count(-1)} (a difference "
        f"counts when it exceeds the two standard deviations); with TM stitches it was behind on "
        f"{votes['tm'].count(-1)} and ahead on {votes['tm'].count(1)}. The distilled wide row alone averaged "
        f"{gap:.1f} points above SN-Net's anchor of the same shape."
    )
    return {"source": "benchmarks/results/compare/runs.json, benchmarks/RESULTS.md", "seeds": [r["seed"] for r in runs],
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
    p.add_argument("--demo-ranges", metavar="JSON", help="only write the demo's expected ranges from OUT/runs.json to JSON "
                   "(src/stitchkit/configs/demo_ranges.json) and stop")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.demo_ranges:
        ranges = demo_ranges(json.loads((out / "runs.json").read_text()))
        pathlib.Path(args.demo_ranges).write_text(json.dumps(ranges, indent=1) + "\n")
        return 0
    registry = Registry()
    runs = []
    for seed in args.seeds:
        for depth in args.designs:
            cache = out / f"seed{seed}" / f"results-{depth}.json"
            if cache.is_file():
                runs.append(json.loads(cache.read_text()))
                continue
            result = run_seed_design(out, seed, depth, args, registry)
            cache.write_text(json.dumps(result, indent=2))
            runs.append(result)
            print(f"seed {seed}, rows of {depth}: done ({sum(result['seconds'].values()):.0f} s)", flush=True)
    report, rows = [], []
    for depth in args.designs:
        text, table = summarise(runs, depth)
        report.append(text)
        rows += table
    text = "\n".join(report)
    print(text)
    (out / "summary.md").write_text(text)
    (out / "runs.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = [k for k in rows[0] if k not in ("depth", "descendant", "params")]
        w.writerow(["depth", "descendant", "params", *[f"{c}-{s}" for c in cols for s in ("mean", "std")]])
        for r in rows:
            w.writerow([r["depth"], r["descendant"], r["params"],
                        *[x for c in cols for x in (r[c] if r[c] is not None else ("", ""))]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
