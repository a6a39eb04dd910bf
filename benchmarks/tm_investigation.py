"""Why does TM trail LS at small scale, and what closes the gap?

    python benchmarks/tm_investigation.py --seeds 0 1 2 [--compare benchmarks/results/compare]

Runs after benchmarks/compare_methods.py and reuses its ancestries and
distilled rows (rows of 6 blocks), so only stitching and fine-tuning run here.
Variants, each over the same seeds:

* ``tm-ls``: TM refined by least squares towards TM (ridge 0.1), same budget;
* ``tm-long`` / ``ls-long``: TM and LS with 3x the fine-tuning epochs;
* ``tm-dense``: the rows re-distilled with dense (3-level) distillation for the
  wide row too (the paper's default distils only its last block), then TM;
  TM assumes the wide row's features at every stitch position equal the
  ancestry's, which last-block distillation does not ask for.

Prints mean ± std of top-1 per descendant next to the comparison's TM and LS
rows, and writes JSON next to the comparison's results.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics

from stitchkit.io import storage
from stitchkit.engine.settings import resolve
from stitchkit.core.registry import Registry

VARIANTS = {  # name: (initializer, fine-tuning epochs factor, distillation levels)
    "tm-ls": ("tm-ls", 1, "auto"),
    "tm-long": ("tm", 3, "auto"),
    "ls-long": ("ls", 3, "auto"),
    "tm-dense": ("tm", 1, "dense"),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--compare", default="benchmarks/results/compare")
    p.add_argument("--depth", type=int, default=6)
    args = p.parse_args(argv)
    root = pathlib.Path(args.compare)
    saved = json.loads((root / "runs.json").read_text()) if (root / "runs.json").is_file() else None
    base_args = saved["args"] if saved else {"aux_epochs": 15, "finetune_epochs": 10, "finetune_lr": 5e-4}
    registry = Registry()
    results: dict[str, dict[int, dict[str, float]]] = {v: {} for v in VARIANTS}
    after_init: dict[int, dict[str, float]] = {}
    dense_init: dict[str, dict[int, dict[str, float]]] = {}
    base: dict[str, dict[int, dict[str, float]]] = {"tm": {}, "ls": {}}
    for seed in args.seeds:
        seed_dir = root / f"seed{seed}"
        cached = json.loads((seed_dir / f"results-{args.depth}.json").read_text())
        for k in base:
            base[k][seed] = cached["learngene"][k]
        cfg_file = seed_dir / f"lg{args.depth}-tm" / "resolved.json"
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else None
        for name, (init, factor, levels) in VARIANTS.items():
            vdir = seed_dir / f"lg{args.depth}-{name}"
            vdir.mkdir(parents=True, exist_ok=True)
            for phase in (seed_dir / f"lg{args.depth}-tm").glob("distill-row*"):
                if levels == "auto" and not (vdir / phase.name).exists():
                    os.symlink(phase.resolve(), vdir / phase.name)
            train = {"batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "warmup_epochs": 1,
                     "label_smoothing": 0.0, "eval_every": 0, "progress": False, "seed": seed}
            cfg = {"method": "learngene-pool",
                   "data": {"source": "digits", "img_size": 16, "in_chans": 1},
                   "model": {"depth": 12, "embed_dim": 64, "num_heads": 4, "patch_size": 4},
                   "train": train,
                   "learngene": {"ancestry": str(seed_dir / "ancestry" / "ancestry.safetensors"),
                                 "rows": f"{args.depth}x16:1,{args.depth}x64:4", "initializer": init,
                                 "levels": levels,
                                 "compare_initializers": {"tm-ls": ["tm-ls"], "tm-dense": ["tm", "tm-pinv", "ls"]}.get(name, []),
                                 "distill": {"epochs": base_args["aux_epochs"]},
                                 "finetune": {"epochs": base_args["finetune_epochs"] * factor, "lr": base_args["finetune_lr"]}}}
            if config is not None:  # the comparison's exact data/model/train sections
                cfg["data"], cfg["model"] = config["data"], config["model"]
            pool = registry.method("learngene-pool").build(resolve(cfg), out_dir=vdir, registry=registry)
            meta = storage.read_pool_metadata(pool)["pool"]
            results[name][seed] = {p: e["top1"] for p, e in meta["evaluation"].items()}
            if name == "tm-ls":
                after_init[seed] = meta["info"]["learngene"]["after_init"]["tm-ls"]
            if name == "tm-dense":
                for init_name, top1 in meta["info"]["learngene"]["after_init"].items():
                    dense_init.setdefault(init_name, {})[seed] = top1
            print(f"seed {seed} {name}: done", flush=True)
    names = list(next(iter(results["tm-ls"].values())))

    def ms(table: dict[int, dict[str, float]], n: str) -> str:
        v = [table[s][n] for s in args.seeds]
        return f"{statistics.fmean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"

    lines = ["| descendant | tm-ls init | dense: tm init | dense: tm-pinv init | dense: ls init | tm (ft x1) | ls (ft x1) "
             "| tm-ls (ft x1) | dense: tm (ft x1) | tm (ft x3) | ls (ft x3) |", "|---" * 11 + "|"]
    for n in names:
        lines.append(f"| `{n}` | {ms(after_init, n)} | {ms(dense_init['tm'], n)} | {ms(dense_init['tm-pinv'], n)} | "
                     f"{ms(dense_init['ls'], n)} | {ms(base['tm'], n)} | {ms(base['ls'], n)} | {ms(results['tm-ls'], n)} | "
                     f"{ms(results['tm-dense'], n)} | {ms(results['tm-long'], n)} | {ms(results['ls-long'], n)} |")
    text = "\n".join(lines)
    print(text)
    (root / f"tm_investigation-{args.depth}.md").write_text(text + "\n")
    (root / f"tm_investigation-{args.depth}.json").write_text(json.dumps(
        {"seeds": args.seeds, "after_init_tm_ls": after_init, "after_init_dense": dense_init, "variants": results, "base": base}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
