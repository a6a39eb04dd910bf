"""Every method on Fashion-MNIST over seeds, with the dataset's published baselines beside.

    apt-get install dataset-fashion-mnist
    # one seed per core, the ancestry trained once (or --ancestry FILE) and shared by every seed:
    python benchmarks/fashion_mnist.py --seeds 0 & python benchmarks/fashion_mnist.py --seeds 1 & wait
    python benchmarks/fashion_mnist.py --seeds 2
    # the tables, plot and summary from the finished seeds (nothing is retrained):
    python benchmarks/fashion_mnist.py --seeds 0 1 2

The builds are the shipped Fashion-MNIST configs (plugins/*/configs/*fashion*mnist*.toml), read
as a user reads them, with the number of epochs set here (``--aux-epochs`` for the distillation
and SN-Net's anchor training, ``--finetune-epochs`` for every fine-tuning) so that one seed fits
in about 40 minutes of one core. The ancestry is the shipped
src/stitchkit/configs/fashion-mnist-ancestry.toml (12x64:4, patch 7, 20 epochs), trained once:
the spread over seeds is the spread of everything built from it. Per seed:

* Learngene Pool, rows 6x16:1 and 6x64:4 distilled once, stitched with TM and with LS (both also
  evaluated right after initialisation) and fine-tuned with prediction distillation;
* SN-Net at equal storage: anchors of the rows' shapes trained from scratch for as many epochs as
  the distillation, LS stitch layers, the same fine-tuning budget and the same teacher;
* SN-Netv2 on SN-Net's trained anchors (two-way routes, rank-8 LS stitch layers, ``ros``);
* the narrowest, a middle and the widest Learngene Pool descendant's architecture trained alone
  (fresh random weights, that one path) from scratch (cross-entropy) and distilled from the
  ancestry (the pool's fine-tuning loss), each for an equal share of the Learngene Pool's training
  FLOPs (its distillation + fine-tuning as ``stitchkit cost`` prices them, over its descendants),
  with the rows' training recipe (lr 1e-3, 1 warm-up epoch, cosine).

Every network is tested on all 10,000 official test images. Written under ``--out``:
``seed<N>/results.json`` per seed, ``summary.md`` (per descendant: params, MACs, top-1 mean ± std
per method; which differences exceed the spread; wall time and training FLOPs per method),
``runs.json``, ``summary.csv`` and ``fashion_mnist.png`` (top-1 against params, one line per
method with its spread, the published baselines as reference lines). Every phase is resumable.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import pathlib
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from compare_methods import _beats, _link_distilled, blocks_key, by_blocks, mean_std  # noqa: E402

from stitchkit.apps.cost import training_cost  # noqa: E402
from stitchkit.core.registry import Registry  # noqa: E402
from stitchkit.core.spec import parse_rows  # noqa: E402
from stitchkit.engine import PoolTask, TrainConfig, build_data, evaluate, fit  # noqa: E402
from stitchkit.engine.data import DataConfig, derive_seed, seeded  # noqa: E402
from stitchkit.engine.idx import BASELINES  # noqa: E402
from stitchkit.engine.model import load_model  # noqa: E402
from stitchkit.engine.settings import load_config  # noqa: E402
from stitchkit.engine.standalone import train_model  # noqa: E402
from stitchkit.io import storage  # noqa: E402
from stitchkit.pool.measure import count_params  # noqa: E402
from stitchkit.pool.pool import Pool  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
ANCESTRY = ROOT / "src/stitchkit/configs/fashion-mnist-ancestry.toml"
CONFIGS = {
    "learngene-pool": ROOT / "plugins/stitchkit_learngene/configs/learngene_fashion_mnist.toml",
    "snnet": ROOT / "plugins/stitchkit_snnet/configs/fashion-mnist.toml",
    "snnetv2": ROOT / "plugins/stitchkit_snnetv2/configs/fashion-mnist.toml",
}
ALONE = ("scratch", "distilled")
#: Columns of the per-descendant table: key, heading.
COLUMNS = [
    ("init-tm", "TM, at init"), ("init-ls", "LS, at init"),
    ("lg-tm", "LG (TM)"), ("lg-ls", "LG (LS)"),
    ("snnet-same-path", "SN-Net same path"), ("snnet-best-at-size", "SN-Net best ≤ size"),
    ("snnetv2-same-path", "SN-Netv2 same path"), ("snnetv2-best-at-size", "SN-Netv2 best ≤ size"),
    ("alone-scratch", "alone, scratch"), ("alone-distilled", "alone, distilled"),
]


def build_config(method: str, seed: int, args: argparse.Namespace, **sets: Any) -> dict[str, Any]:
    """A shipped config with this benchmark's seed, budget and files (``--set``-style keys)."""
    overrides = {"train.seed": seed, "train.progress": False, **sets}
    if args.train_images:
        overrides["data.train_images"] = args.train_images
    return load_config(CONFIGS[method], [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def build(method: str, cfg: dict[str, Any], out: pathlib.Path, registry: Registry) -> tuple[dict[str, Any], float]:
    """Build one pool (resumable); its metadata and the wall time this call took."""
    t0 = time.perf_counter()
    pool = registry.method(method).build(cfg, out_dir=out, registry=registry)
    return storage.read_pool_metadata(pool)["pool"], time.perf_counter() - t0


def method_flops(cfg: dict[str, Any], registry: Registry) -> float:
    """Training FLOPs of one build as ``stitchkit cost`` prices it, the (shared) ancestry left out."""
    return float(training_cost(cfg, registry=registry)["build_flops"])


def fresh_pool(ancestry: Any, rows: str, registry: Registry, seed: int) -> Pool:
    """Random rows of the pool's shapes and fresh stitch layers: the descendants' architectures, re-initialised."""
    with seeded(derive_seed("fashion-mnist-alone", seed)):
        nets = [type(ancestry).from_arch(ancestry.resized(s)) for s in parse_rows(rows)]
        return Pool.from_method(registry.method("learngene-pool"), nets)


def run_alone(seed_dir: pathlib.Path, seed: int, lg_cfg: dict[str, Any], lg_flops: float, ancestry_file: pathlib.Path,
              registry: Registry) -> list[dict[str, Any]]:
    """The narrowest, a middle and the widest descendant trained alone at an equal share of the pool's FLOPs."""
    rows = lg_cfg["learngene"]["rows"]
    ancestry = load_model(ancestry_file, registry)
    ancestry.model.eval()
    data = build_data(DataConfig.from_config(lg_cfg))
    with torch.device("meta"):
        skeleton = fresh_pool(ancestry, rows, registry, seed)
    paths = skeleton.paths
    order = sorted(range(len(paths)), key=lambda i: count_params(skeleton.descendant(paths[i])))
    picks = [order[0], order[len(order) // 2], order[-1]]
    share = lg_flops / len(paths)
    phases = {ph["name"]: ph for ph in training_cost(lg_cfg, registry=registry)["phases"]}
    teacher_macs = phases["distill-row0"]["frozen_macs"]  # the ancestry's forward, paid by a distilled student
    train = TrainConfig.from_config(lg_cfg)
    batch = train.batch_size
    out = []
    for index in picks:
        path = paths[index]
        macs = skeleton.path_macs(path)
        entry: dict[str, Any] = {"name": path.name, "params": count_params(skeleton.descendant(path)), "macs": macs}
        for variant in ALONE:
            distilled = variant == "distilled"
            per_image = 2 * (3 * macs + (teacher_macs if distilled else 0))
            steps = max(1, round(share / (per_image * batch)))
            pool = fresh_pool(ancestry, rows, registry, seed)
            sampler = registry.create("sampler", "uniform", [path])
            task = PoolTask(pool, sampler, teacher=ancestry if distilled else None, distillation="soft" if distilled else "none")
            cfg = dataclasses.replace(train, epochs=max(1, math.ceil(steps / data.steps_per_epoch(batch))), max_steps=steps,
                                      eval_every=0, progress=False)
            identity = {"benchmark": "fashion-mnist-alone", "rows": rows, "path": path.name, "variant": variant,
                        "steps": steps, "train": dataclasses.asdict(cfg), "data": lg_cfg["data"]}
            t0 = time.perf_counter()
            fit(task, data, cfg, out_dir=seed_dir / "alone", phase=f"alone-{index}-{variant}", config=identity)
            top1 = float(evaluate(pool.descendant(path), data.test_loader())["top1"])
            entry[variant] = {"top1": top1, "steps": steps, "flops": steps * batch * per_image,
                              "seconds": time.perf_counter() - t0}
        out.append(entry)
        print(f"seed {seed}: {path.name} trained alone", flush=True)
    return out


def run_seed(out: pathlib.Path, seed: int, ancestry: pathlib.Path, args: argparse.Namespace, registry: Registry) -> dict[str, Any]:
    seed_dir = out / f"seed{seed}"
    start, cpu = time.perf_counter(), time.process_time()
    result: dict[str, Any] = {"seed": seed, "seconds": {}, "flops": {}}
    epochs = {"learngene.distill.epochs": args.aux_epochs, "learngene.finetune.epochs": args.finetune_epochs}
    lg: dict[str, dict[str, Any]] = {}
    for init in ("tm", "ls"):
        vdir = seed_dir / f"lg-{init}"
        if init != "tm":
            _link_distilled(seed_dir / "lg-tm", vdir)
        cfg = build_config("learngene-pool", seed, args, **epochs, **{
            "learngene.ancestry": str(ancestry), "learngene.initializer": init,
            "learngene.compare_initializers": ["tm", "ls"] if init == "tm" else []})
        meta, seconds = build("learngene-pool", cfg, vdir, registry)
        lg[init] = cfg
        result.setdefault("learngene", {})[init] = {p: e["top1"] for p, e in meta["evaluation"].items()}
        result["seconds"][f"lg-{init}"] = seconds
        result["flops"][f"lg-{init}"] = method_flops(cfg, registry)
        if init == "tm":
            result["after_init"] = meta["info"]["learngene"]["after_init"]
            result["params"] = {p: e["params"] for p, e in meta["evaluation"].items()}
            result["macs"] = {p: e["macs"] for p, e in meta["evaluation"].items()}
        print(f"seed {seed}: Learngene Pool ({init.upper()}) built in {seconds:.0f} s", flush=True)
    cfg = build_config("snnet", seed, args, **{
        "snnet.teacher": str(ancestry), "snnet.anchor_training.epochs": args.aux_epochs,
        "snnet.finetune.epochs": args.finetune_epochs, "snnet.evaluate_after_init": True})
    meta, seconds = build("snnet", cfg, seed_dir / "snnet", registry)
    result["snnet"] = by_blocks(meta)
    result["seconds"]["snnet"], result["flops"]["snnet"] = seconds, method_flops(cfg, registry)
    print(f"seed {seed}: SN-Net built in {seconds:.0f} s", flush=True)
    v2 = build_config("snnetv2", seed, args, **{"snnetv2.teacher": str(ancestry), "snnetv2.finetune.epochs": args.finetune_epochs})
    for i, anchor in enumerate(v2["snnetv2"]["anchors"]):
        anchor["checkpoint"] = str(seed_dir / "snnet" / "anchors" / f"anchor{i}.safetensors")
    meta, seconds = build("snnetv2", v2, seed_dir / "snnetv2", registry)
    result["snnetv2"] = by_blocks(meta)
    result["seconds"]["snnetv2"], result["flops"]["snnetv2"] = seconds, method_flops(v2, registry)
    print(f"seed {seed}: SN-Netv2 built in {seconds:.0f} s", flush=True)
    t0 = time.perf_counter()
    result["alone"] = run_alone(seed_dir, seed, lg["tm"], result["flops"]["lg-tm"], ancestry, registry)
    result["seconds"]["alone"] = time.perf_counter() - t0
    result["flops"]["alone"] = sum(d[v]["flops"] for d in result["alone"] for v in ALONE)
    result["seed_seconds"], result["seed_cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    return result


def column_values(run: dict[str, Any], key: str, name: str) -> float | None:
    """One seed's top-1 for descendant ``name`` under column ``key`` (None: not measured for it)."""
    params = run["params"][name]
    if key.startswith("init-"):
        return run["after_init"][key[5:]][name]
    if key.startswith("lg-"):
        return run["learngene"][key[3:]][name]
    if key.startswith("alone-"):
        hit = [d for d in run["alone"] if d["name"] == name]
        return hit[0][key[6:]]["top1"] if hit else None
    method, _, kind = key.partition("-")
    pool = run[method]
    if kind == "same-path":
        entry = pool.get(blocks_key(name))
        return None if entry is None else entry["top1"]
    return max((v["top1"] for v in pool.values() if v["params"] <= params), default=None)


def summarise(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    first = runs[0]
    names = sorted(first["params"], key=lambda n: first["params"][n])
    table = []
    for name in names:
        row: dict[str, Any] = {"descendant": name, "params": first["params"][name], "macs": first["macs"][name]}
        for key, _ in COLUMNS:
            vals = [column_values(r, key, name) for r in runs]
            row[key] = mean_std([v for v in vals if v is not None]) if all(v is not None for v in vals) else None
        table.append(row)
    lines = [f"### Fashion-MNIST, rows 6x16:1 + 6x64:4 from a 12x64:4 ancestry ({len(runs)} seeds: test top-1 % on "
             "10,000 images, mean ± std)", "",
             "| descendant | params | MMACs | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for row in table:
        cells = ["-" if row[k] is None else f"{row[k][0]:.1f} ± {row[k][1]:.1f}" for k, _ in COLUMNS]
        lines.append(f"| `{row['descendant']}` | {row['params']:,} | {row['macs'] / 1e6:.2f} | " + " | ".join(cells) + " |")
    lines += ["", claims(table), "", costs(runs), ""]
    return "\n".join(lines), table


CLAIMS = [
    ("lg-tm", "snnet-same-path", "Learngene Pool (TM) vs SN-Net, same path, equal storage"),
    ("lg-ls", "snnet-same-path", "Learngene Pool (LS) vs SN-Net, same path, equal storage"),
    ("lg-tm", "snnet-best-at-size", "Learngene Pool (TM) vs SN-Net's best configuration at or below the size"),
    ("lg-ls", "snnet-best-at-size", "Learngene Pool (LS) vs SN-Net's best configuration at or below the size"),
    ("lg-ls", "snnetv2-best-at-size", "Learngene Pool (LS) vs SN-Netv2's best configuration at or below the size"),
    ("snnetv2-best-at-size", "snnet-best-at-size", "SN-Netv2 vs SN-Net, best at or below the size"),
    ("lg-tm", "lg-ls", "TM vs LS after fine-tuning"),
    ("init-tm", "init-ls", "TM vs LS right after initialisation"),
    ("lg-tm", "alone-distilled", "Learngene Pool (TM) vs the same network distilled alone at equal FLOPs"),
    ("lg-ls", "alone-distilled", "Learngene Pool (LS) vs the same network distilled alone at equal FLOPs"),
    ("lg-ls", "alone-scratch", "Learngene Pool (LS) vs the same network trained alone from scratch at equal FLOPs"),
]


def claims(table: list[dict[str, Any]]) -> str:
    """Per pair of columns: on how many descendants the first is ahead, behind, or within the spread
    (a difference counts when it exceeds the sum of the two standard deviations), with the differences."""
    out = []
    for a, b, what in CLAIMS:
        rows = [r for r in table if r[a] is not None and r[b] is not None]
        votes = [_beats(r[a], r[b]) for r in rows]
        diffs = ", ".join(f"{r[a][0] - r[b][0]:+.1f}{'' if v else '~'}" for r, v in zip(rows, votes))
        out.append(f"- {what}: first ahead on {votes.count(1)}, behind on {votes.count(-1)}, within the spread on "
                   f"{votes.count(0)} of {len(rows)} (differences small to large, ~ within the spread: {diffs})")
    return "\n".join(out)


METHODS = [("lg-tm", "Learngene Pool (TM): distillation + fine-tuning"), ("lg-ls", "Learngene Pool (LS): same distilled rows + fine-tuning"),
           ("snnet", "SN-Net: anchors trained + fine-tuning"), ("snnetv2", "SN-Netv2: fine-tuning on SN-Net's anchors"),
           ("alone", "3 descendants x (scratch, distilled) alone")]


def costs(runs: list[dict[str, Any]]) -> str:
    lines = ["| method | training FLOPs (stitchkit cost) | wall time per seed (s, mean ± std) |", "|---|---|---|"]
    for key, what in METHODS:
        flops = statistics.fmean(r["flops"][key] for r in runs)
        secs = mean_std([r["seconds"][key] for r in runs])
        lines.append(f"| {what} | {flops:.2e} | {secs[0]:.0f} ± {secs[1]:.0f} |")
    per_seed = mean_std([r["seed_seconds"] for r in runs])
    cpu = mean_std([r["seed_cpu_seconds"] for r in runs])
    lines += ["", f"One seed: {per_seed[0] / 60:.1f} ± {per_seed[1] / 60:.1f} min wall, {cpu[0] / 60:.1f} ± {cpu[1] / 60:.1f} "
              "min of CPU (one thread per seed; LG (LS) shares the distilled rows of LG (TM): its time is its "
              "fine-tuning, its FLOPs a whole build's). The shared ancestry is not counted."]
    return "\n".join(lines)


PLOT = [("lg-tm", "Learngene Pool (TM)", "o-"), ("lg-ls", "Learngene Pool (LS)", "s-"),
        ("alone-distilled", "alone, distilled, equal FLOPs", "D:"), ("alone-scratch", "alone, scratch, equal FLOPs", "v:")]


def frontier(runs: list[dict[str, Any]], method: str) -> list[tuple[int, tuple[float, float]]]:
    """A stitched method's best top-1 at or below each of its own configurations' sizes (mean ± std over seeds)."""
    sizes = sorted({v["params"] for v in runs[0][method].values()})
    out = []
    for size in sizes:
        best = [max(v["top1"] for v in r[method].values() if v["params"] <= size) for r in runs]
        out.append((size, mean_std(best)))
    return out


def plot(table: list[dict[str, Any]], runs: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for key, label, style in PLOT:
        pts = [(r["params"], r[key]) for r in table if r[key] is not None]
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt=style, capsize=3,
                    label=label, alpha=0.85)
    for method, label, style in (("snnet", "SN-Net, best at or below size", "^-"), ("snnetv2", "SN-Netv2, best at or below size", "x-")):
        pts = frontier(runs, method)
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], fmt=style, capsize=3,
                    label=label, alpha=0.85)
    ax.set_xscale("log")
    for label, top1 in BASELINES["fashion-mnist"]:  # published, from the package's README: x in axes units
        ax.axhline(top1, color="grey", lw=0.8, ls="--")
        ax.text(0.01, top1 + 0.15, f"{label.split(' (')[0]} {top1:g} %", fontsize=7, color="dimgrey",
                transform=ax.get_yaxis_transform())
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test top-1 (%), 10,000 official test images")
    ax.set_title(f"Fashion-MNIST, {len(runs)} seeds (mean ± std): every method from one 12x64 ancestry")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ancestry", help="a model file written by `stitchkit train` of the shipped ancestry config "
                   "(default: train it into OUT/ancestry, once)")
    p.add_argument("--aux-epochs", type=int, default=6, help="distillation epochs = SN-Net anchor epochs")
    p.add_argument("--finetune-epochs", type=int, default=4, help="fine-tuning epochs of every pool")
    p.add_argument("--train-images", type=int, default=0, help="a stratified subset of the training set (0: all 55,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (one seed per core)")
    p.add_argument("--out", default="benchmarks/results/fashion-mnist")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    registry = Registry()
    ancestry = pathlib.Path(args.ancestry) if args.ancestry else train_model(load_config(ANCESTRY, ["train.progress=false"]), out / "ancestry")
    runs = []
    for seed in args.seeds:
        cache = out / f"seed{seed}" / "results.json"
        if cache.is_file():
            runs.append(json.loads(cache.read_text()))
            continue
        result = run_seed(out, seed, ancestry, args, registry)
        result["args"] = {k: v for k, v in vars(args).items() if k != "seeds"}
        write_atomic(cache, json.dumps(result, indent=1))
        runs.append(result)
        print(f"seed {seed}: done in {result['seed_seconds'] / 60:.1f} min", flush=True)
    if len(runs) < 2:
        return 0
    text, table = summarise(runs)
    print(text)
    write_atomic(out / "summary.md", text)
    write_atomic(out / "runs.json", json.dumps({"runs": runs}, indent=1))
    with open(out / "summary.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["descendant", "params", "macs", *[f"{k}-{s}" for k, _ in COLUMNS for s in ("mean", "std")]])
        for r in table:
            w.writerow([r["descendant"], r["params"], r["macs"], *[x for k, _ in COLUMNS for x in (r[k] or ("", ""))]])
    os.replace(out / "summary.csv.tmp", out / "summary.csv")
    plot(table, runs, out / "fashion_mnist.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
