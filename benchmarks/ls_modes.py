"""LS stitch init in eval mode (stitchkit's default) vs train mode (the official code), accuracy right after init.

    OMP_NUM_THREADS=1 python benchmarks/ls_modes.py RUN [--seeds 0 1 2 3 4] [--drop-path 0.1]

``RUN`` is an SN-Net build folder (``stitchkit build plugins/stitchkit_snnet/configs/digits.toml
--out RUN``): its ``anchors/anchor<i>.safetensors`` and ``resolved.json`` are used, nothing
is trained. The anchors are rebuilt with ``--drop-path`` (DeiT's and the official code's 0.1),
which only train mode exercises. Per seed, both modes fit the same 100 training images
(the build's seeded choice); train mode also mixes them (timm Mixup 0.8 / CutMix 1.0) and
draws drop-path. Prints test top-1 of every configuration (mean over seeds) and the mean
over stitched configurations.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

import torch

from stitchkit.engine import DataConfig, build_data, evaluate_pool, load_model
from stitchkit.core.interfaces import InitContext
from stitchkit.pool.pool import Pool
from stitchkit.families.vit import TimmViT
from stitchkit_snnet.build import init_images
from stitchkit_snnet.config import SNNetConfig
from stitchkit_snnet.ls import LeastSquaresInitializer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=pathlib.Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--images", type=int, default=100)
    args = ap.parse_args()

    config = json.loads((args.run / "resolved.json").read_text())
    config = config.get("config", config)
    data = build_data(DataConfig.from_config(config))
    anchors = []
    for f in sorted((args.run / "anchors").glob("anchor*.safetensors")):
        saved = load_model(f)
        row = TimmViT.from_arch({**saved.arch(), "drop_path_rate": args.drop_path})
        row.model.load_state_dict(saved.model.state_dict())
        anchors.append(row)
    cfg = SNNetConfig(**{k: v for k, v in config.get("snnet", {}).items() if k in SNNetConfig.__dataclass_fields__})
    pool = Pool.from_method(cfg.method(), anchors)
    loader = data.eval_loader(cfg.eval_split)
    results: dict[str, dict[str, list[float]]] = {"eval": {}, "train": {}}
    for seed in args.seeds:
        images = init_images(data, args.images, seed)
        for mode in ("eval", "train"):
            LeastSquaresInitializer(mode=mode).initialize(pool, InitContext(images=images, seed=seed))
            for name, res in evaluate_pool(pool, loader).items():
                results[mode].setdefault(name, []).append(res["top1"])
    labels = {p.name: p.label for p in pool.paths}
    print(f"{len(args.seeds)} seeds, {args.images} images, drop-path {args.drop_path}; test top-1 right after LS init")
    print(f"| configuration | eval mode | train mode (official) |\n|---|---:|---:|")
    for name in results["eval"]:
        e, t = results["eval"][name], results["train"][name]
        print(f"| {labels[name]} | {statistics.fmean(e):.1f} ± {statistics.pstdev(e):.1f} | {statistics.fmean(t):.1f} ± {statistics.pstdev(t):.1f} |")
    stitched = [n for n in results["eval"] if "+" in n]
    for mode in ("eval", "train"):
        per_seed = [statistics.fmean(results[mode][n][i] for n in stitched) for i in range(len(args.seeds))]
        print(f"{mode} mode: mean over the {len(stitched)} stitched configurations {statistics.fmean(per_seed):.1f} "
              f"(per seed {', '.join(f'{v:.1f}' for v in per_seed)})")
    wins = sum(statistics.fmean(results["eval"][n]) > statistics.fmean(results["train"][n]) for n in stitched)
    print(f"eval mode higher on {wins} of {len(stitched)} stitched configurations")
    out = args.run / "ls_modes.json"
    out.write_text(json.dumps({"seeds": args.seeds, "drop_path": args.drop_path, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
