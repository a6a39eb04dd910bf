"""LS stitch weights against the official SN-Net ``ps_inv``, side by side on the same features.

Random-weight anchors (timm names, e.g. ResNet-18 -> ResNet-50) and random
calibration images; stitchkit's SN-Net pool finds every place of every stitch
layer and collects its channels-last front and end features once. Each place is
then solved three ways: the official ``ps_inv`` (a float32 ``torch.linalg.pinv``,
the function itself, taken from a checkout of ziplab/SN-Net with ``--official``),
stitchkit's default (``solver = "official"``: the same cut-off in float64) and
``solver = "exact"``. A shared layer's weight is the mean over its places (as
both codes do). Printed per layer: the max relative weight difference to the
official weights, ``max|W - W_official| / max|W_official|``, and each solution's
worst fit residual over the layer's places, ``||front W^T + b - end|| / ||end||``.

    git -C SNNET show HEAD:stitching_resnet_swin/timm/models/snnet.py > /tmp/official_snnet.py
    OMP_NUM_THREADS=1 python benchmarks/ls_official_check.py --official /tmp/official_snnet.py \\
        [--anchors resnet18,resnet50] [--images 16] [--img-size 224]

``--official`` reads only the two functions ``rearrange_activations`` and
``ps_inv`` out of the file (the module itself imports the official repository's
vendored timm) and runs them unchanged.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch

from stitchkit.core.registry import Registry
from stitchkit.pool.features import collect_stitch_features
from stitchkit.pool.pool import Pool
from stitchkit_snnet.ls import solve_affine


def official_ps_inv(path: pathlib.Path) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The official ``ps_inv`` (and the ``rearrange_activations`` it calls), compiled from their source."""
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("rearrange_activations", "ps_inv")]
    if {n.name for n in keep} != {"rearrange_activations", "ps_inv"}:
        raise SystemExit(f"{path}: no ps_inv / rearrange_activations functions; pass the official stitching code's snnet.py")
    namespace: dict[str, Any] = {"torch": torch, "np": np}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 - the official function, run as is
    return namespace["ps_inv"]


def residual(w: torch.Tensor, b: torch.Tensor, front: torch.Tensor, end: torch.Tensor) -> float:
    x = front.reshape(-1, front.shape[-1]).double()
    y = end.reshape(-1, end.shape[-1]).double()
    return float((x @ w.double().T + b.double() - y).norm() / y.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=pathlib.Path, required=True, help="the official stitching code's snnet.py")
    ap.add_argument("--anchors", default="resnet18,resnet50")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ps_inv = official_ps_inv(args.official)
    registry = Registry()
    torch.manual_seed(args.seed)
    family = {"resnet": "timm-resnet", "swin": "timm-swin", "convnext": "timm-convnext"}
    rows = [registry.ancestry(next((v for k, v in family.items() if name.startswith(k)), "timm-vit")).from_name(name)
            for name in args.anchors.split(",")]
    for r in rows:
        r.model.eval()
    pool = Pool.from_method(registry.method("snnet"), rows)
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(args.seed + 1))
    per_layer: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    with torch.no_grad():
        for f in collect_stitch_features(pool, images):
            x, y = f.front.reshape(-1, f.front.shape[-1]), f.end.reshape(-1, f.end.shape[-1])
            w_off, b_off = ps_inv(x, y)
            sols = {"official ps_inv": (w_off, b_off), "stitchkit official": solve_affine(f.front, f.end),
                    "stitchkit exact": solve_affine(f.front, f.end, "exact")}
            for k, sol in sols.items():
                per_layer[f.name][k].append(sol)
            per_layer[f.name]["features"].append((f.front, f.end))
    print(f"anchors {args.anchors}, {args.images} random images at {args.img_size}, random weights (seed {args.seed})")
    print("| layer | places | shape | stitchkit official: max rel. weight diff | exact: max rel. weight diff | "
          "worst residual: official ps_inv / stitchkit official / exact |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, sols in per_layer.items():
        means = {k: (torch.stack([w.double() for w, _ in v]).mean(0), torch.stack([b.double() for _, b in v]).mean(0))
                 for k, v in sols.items() if k != "features"}
        ref = means["official ps_inv"][0]
        diff = {k: float((means[k][0] - ref).abs().max() / ref.abs().max()) for k in ("stitchkit official", "stitchkit exact")}
        worst = max(worst, diff["stitchkit official"])
        res = {k: max(residual(*means[k], fr, en) for fr, en in sols["features"]) for k in means}
        print(f"| {name} | {len(sols['features'])} | {tuple(ref.shape)} | {diff['stitchkit official']:.2e} | "
              f"{diff['stitchkit exact']:.2e} | {res['official ps_inv']:.3g} / {res['stitchkit official']:.3g} / "
              f"{res['stitchkit exact']:.3g} |")
    print(f"max relative weight difference, stitchkit (official rule, float64) vs official ps_inv: {worst:.2e}")


if __name__ == "__main__":
    main()
