"""What a pool buys: every descendant against the same network trained on its own, on digits.

    python benchmarks/equal_compute.py --seeds 0 1 2 [--out benchmarks/results/equal_compute]

The design is the demo's (rows 6x16:1 and 6x64:4, a 12x64:4 ancestry). Per seed:

* the pools, as ``benchmarks/compare_methods.py`` builds them (its ``run_seed_design``,
  same directory layout, so a finished compare run is reused): Learngene Pool
  fine-tuned from TM and from LS, and SN-Net at equal storage;
* every Learngene Pool descendant's architecture, re-initialised (a fresh pool
  of random rows and stitch layers, that one path trained), trained alone
  (a) from scratch (cross-entropy) and (b) distilled from the same ancestry
  (cross-entropy + soft prediction distillation, the pool's fine-tuning loss), at two budgets:
  (i) the epochs the pool's fine-tuning gave the whole pool (``--finetune-epochs``);
  (ii) an equal share of the Learngene Pool's training FLOPs (its distillation and
  fine-tuning phases as ``stitchkit cost`` prices them, the shared ancestry left
  out), converted to steps with the same convention (trained 3 forwards, the
  frozen ancestry 1).

Prints a markdown table (top-1 mean ± std over seeds per descendant and variant)
and the FLOPs of the pool against the sum over descendants trained alone; writes
``summary.md``, ``runs.json`` and ``equal_compute.png`` (accuracy vs params, error bars)
under ``--out``. Every training phase is resumable: rerun to continue.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from compare_methods import BASE, LG_VARIANTS, blocks_key, mean_std, run_seed_design  # noqa: E402

from stitchkit.apps.cost import training_cost  # noqa: E402
from stitchkit.engine import PoolTask, TrainConfig, build_data, evaluate, fit  # noqa: E402
from stitchkit.engine.settings import resolve  # noqa: E402
from stitchkit.engine.data import DataConfig, derive_seed, seeded  # noqa: E402
from stitchkit.engine.model import load_model  # noqa: E402
from stitchkit.pool.measure import count_params  # noqa: E402
from stitchkit.pool.pool import Pool  # noqa: E402
from stitchkit.core.registry import Registry  # noqa: E402

DEPTH = 6
ROWS = f"{DEPTH}x16:1,{DEPTH}x64:4"
VARIANTS = ("scratch", "distilled")


def learngene_config(ancestry: pathlib.Path, args: argparse.Namespace, seed: int, initializer: str = "tm") -> dict[str, Any]:
    """The Learngene Pool config compare_methods builds for this seed (for pricing it)."""
    return resolve({"method": "learngene-pool", **BASE, "train": {**BASE["train"], "seed": seed}, "learngene": {
        "ancestry": str(ancestry), "rows": ROWS, "initializer": initializer,
        "distill": {"epochs": args.aux_epochs}, "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr}}})


def fresh_pool(ancestry: Any, registry: Registry, seed: int) -> Pool:
    """Random rows of the pool's shapes and fresh stitch layers (the architectures, re-initialised)."""
    from stitchkit.core.spec import parse_rows

    with seeded(derive_seed("equal-compute-init", seed)):
        rows = [type(ancestry).from_arch(ancestry.resized(s)) for s in parse_rows(ROWS)]
        return Pool.from_method(registry.method("learngene-pool"), rows)


def train_alone(out: pathlib.Path, seed: int, index: int, variant: str, budget: str, steps: int,
                ancestry: Any, data: Any, args: argparse.Namespace, registry: Registry) -> float:
    """Train descendant ``index``'s architecture alone for ``steps`` steps; its test top-1."""
    pool = fresh_pool(ancestry, registry, seed)
    path = pool.paths[index]
    sampler = registry.create("sampler", "uniform", [path])
    distilled = variant == "distilled"
    task = PoolTask(pool, sampler, teacher=ancestry if distilled else None, distillation="soft" if distilled else "none")
    per_epoch = data.steps_per_epoch(BASE["train"]["batch_size"])
    train = TrainConfig(**{**BASE["train"], "seed": seed, "lr": args.finetune_lr,
                           "epochs": max(1, math.ceil(steps / per_epoch)), "max_steps": steps})
    identity = {"benchmark": "equal-compute", "rows": ROWS, "path": path.name, "variant": variant, "budget": budget}
    fit(task, data, train, out_dir=out, phase=f"alone-{index}-{variant}-{budget}", config=identity)
    return float(evaluate(pool.descendant(path), data.test_loader())["top1"])


def run_seed(out: pathlib.Path, seed: int, args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    t0 = time.perf_counter()
    pools = run_seed_design(out, seed, DEPTH, args, registry, [v for v in LG_VARIANTS if v[0] in ("tm", "ls")])
    seed_dir = out / f"seed{seed}"
    ancestry_file = seed_dir / "ancestry" / "ancestry.safetensors"
    ancestry = load_model(ancestry_file, registry)
    ancestry.model.eval()
    data = build_data(DataConfig.from_config(resolve(BASE)))
    cost = training_cost(learngene_config(ancestry_file, args, seed), registry=registry, alone=True)
    phases = {p["name"]: p for p in cost["phases"]}
    pool_flops = sum(p["flops"] for n, p in phases.items() if n.startswith(("distill-row", "finetune-")))
    with torch.device("meta"):
        skeleton = fresh_pool(ancestry, registry, seed)
    paths = skeleton.paths
    macs = [skeleton.path_macs(p) for p in paths]
    anc_macs = phases["distill-row0"]["frozen_macs"]
    batch = BASE["train"]["batch_size"]
    share = pool_flops / len(paths)
    result: dict[str, Any] = {"seed": seed, "pool_flops": pool_flops, "descendants": [], "pools": pools}
    for i, (path, m) in enumerate(zip(paths, macs)):
        entry: dict[str, Any] = {"name": path.name, "params": count_params(skeleton.descendant(path)), "macs": m}
        for variant in VARIANTS:
            per_image = 2 * (3 * m + (anc_macs if variant == "distilled" else 0))
            budgets = {"epochs": args.finetune_epochs * data.steps_per_epoch(batch),
                       "flops": max(1, round(share / (per_image * batch)))}
            for budget, steps in budgets.items():
                top1 = train_alone(seed_dir / "alone", seed, i, variant, budget, steps, ancestry, data, args, registry)
                entry[f"{variant}-{budget}"] = {"top1": top1, "steps": steps, "flops": steps * batch * per_image}
        result["descendants"].append(entry)
        print(f"seed {seed}: {path.name} done", flush=True)
    result["seconds"] = time.perf_counter() - t0
    return result


COLUMNS = ["lg-tm", "lg-ls", "snnet", "scratch-epochs", "distilled-epochs", "scratch-flops", "distilled-flops"]


def summarise(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    table = []
    for i, d in enumerate(runs[0]["descendants"]):
        name = d["name"]
        row: dict[str, Any] = {"descendant": name, "params": d["params"], "macs": d["macs"]}
        row["lg-tm"] = mean_std([r["pools"]["learngene"]["tm"][name] for r in runs])
        row["lg-ls"] = mean_std([r["pools"]["learngene"]["ls"][name] for r in runs])
        sn = [r["pools"]["snnet"].get(blocks_key(name), {}).get("top1") for r in runs]
        row["snnet"] = mean_std(sn) if all(v is not None for v in sn) else None
        for key in COLUMNS[3:]:
            row[key] = mean_std([r["descendants"][i][key]["top1"] for r in runs])
        row["flops-steps"] = {v: runs[0]["descendants"][i][f"{v}-flops"]["steps"] for v in VARIANTS}
        table.append(row)
    pool = statistics.fmean(r["pool_flops"] for r in runs)
    alone = {key: statistics.fmean(sum(d[key]["flops"] for d in r["descendants"]) for r in runs)
             for key in ("scratch-epochs", "distilled-epochs", "scratch-flops", "distilled-flops")}
    lines = [f"### Every descendant vs the same network alone ({len(runs)} seeds, rows {ROWS}: test top-1 mean ± std)", "",
             "| descendant | params | LG pool (TM) | LG pool (LS) | SN-Net same path | scratch, pool epochs | distilled, pool epochs "
             "| scratch, equal FLOPs | distilled, equal FLOPs |", "|---" * 9 + "|"]
    for row in table:
        cells = ["-" if row[c] is None else f"{row[c][0]:.1f} ± {row[c][1]:.1f}" for c in COLUMNS]
        lines.append(f"| `{row['descendant']}` | {row['params']:,} | " + " | ".join(cells) + " |")
    lines += ["", f"Learngene Pool training (distillation + fine-tuning, ancestry excluded): {pool:.3e} FLOPs.",
              "Sum over the descendants trained alone: " + ", ".join(f"{k} {v:.3e} ({v / pool:.2f}x)" for k, v in alone.items()) + ".",
              "", gaps(table), ""]
    return "\n".join(lines), table


def gaps(table: list[dict[str, Any]]) -> str:
    """The pool's accuracy gap to the best alone-trained variant, per budget, beyond the spread or not."""
    out = []
    for pool_col in ("lg-tm", "lg-ls"):
        for budget in ("epochs", "flops"):
            parts = []
            for row in table:
                best = max((row[f"{v}-{budget}"] for v in VARIANTS), key=lambda x: x[0])
                diff = row[pool_col][0] - best[0]
                mark = "" if abs(diff) > row[pool_col][1] + best[1] else " (within spread)"
                parts.append(f"{diff:+.1f}{mark}")
            out.append(f"- {pool_col} minus best alone ({budget} budget), per descendant small to large: " + ", ".join(parts))
    return "\n".join(out)


def plot(table: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [r["params"] for r in table]
    styles = {"lg-tm": "o-", "lg-ls": "s-", "snnet": "^-", "scratch-epochs": "v--", "distilled-epochs": "D--",
              "scratch-flops": "v:", "distilled-flops": "D:"}
    labels = {"lg-tm": "Learngene Pool (TM)", "lg-ls": "Learngene Pool (LS)", "snnet": "SN-Net (same path)",
              "scratch-epochs": "alone, scratch, pool epochs", "distilled-epochs": "alone, distilled, pool epochs",
              "scratch-flops": "alone, scratch, equal FLOPs", "distilled-flops": "alone, distilled, equal FLOPs"}
    for key in COLUMNS:
        pts = [(x, r[key]) for x, r in zip(xs, table) if r[key] is not None]
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt=styles[key],
                    capsize=3, label=labels[key], alpha=0.85)
    ax.set_xlabel("parameters")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"digits, rows {ROWS}: each descendant vs the same network trained alone")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ancestry-epochs", type=int, default=25)
    p.add_argument("--aux-epochs", type=int, default=15, help="distillation epochs = SN-Net anchor epochs")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--out", default="benchmarks/results/equal_compute")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    registry = Registry()
    runs = []
    start = time.perf_counter()
    for seed in args.seeds:
        cache = out / f"seed{seed}" / "equal-compute.json"
        if cache.is_file():
            runs.append(json.loads(cache.read_text()))
            continue
        result = run_seed(out, seed, args, registry)
        cache.write_text(json.dumps(result, indent=2))
        runs.append(result)
    text, table = summarise(runs)
    text += f"\nWall time of this invocation: {time.perf_counter() - start:.0f} s; per seed when computed: " + \
        ", ".join(f"{r['seconds']:.0f} s" for r in runs) + "\n"
    print(text)
    (out / "summary.md").write_text(text)
    (out / "runs.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    plot(table, out / "equal_compute.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
