"""stitchkit's MACs per SN-Net configuration against the official results files' fvcore ``flops``.

The official repository (ziplab/SN-Net) ships, per anchor set, one JSON line per
configuration in ``get_stitch_configs`` order with its fvcore count; stitchkit's
planner lists the same configurations in the same order (tests/test_families.py).
Prints, per anchor set, how far stitchkit's count lies below fvcore's (which also
counts norms, pooling and residual adds) over all configurations.

    OMP_NUM_THREADS=1 python benchmarks/snnet_official_macs.py --official SNNET_CHECKOUT
"""

from __future__ import annotations

import argparse
import json
import pathlib

from stitchkit.apps.planner import plan
from stitchkit.core.registry import Registry

SETS = {
    "Swin-Ti/S/B": ("swin_tiny_patch4_window7_224,swin_small_patch4_window7_224,swin_base_patch4_window7_224",
                    "stitching_swin/results/stitches_res.txt"),
    "ResNet-18 -> ResNet-50": ("resnet18,resnet50", "stitching_resnet_swin/results/stitches_res_resnet_18_50.txt"),
    "ResNet-18 -> Swin-Ti": ("resnet18,swin_tiny_patch4_window7_224",
                             "stitching_resnet_swin/results/stitches_res_resnet_18_swin_ti.txt"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=pathlib.Path, required=True, help="a checkout of ziplab/SN-Net")
    args = ap.parse_args()
    registry = Registry()
    lowest, highest = 1.0, 0.0
    for label, (anchors, results) in SETS.items():
        official = [json.loads(line)["flops"] for line in (args.official / results).read_text().splitlines() if line.strip()]
        mine = [d["macs"] for d in plan("snnet", anchors=anchors.split(","), registry=registry)["descendants"]]
        if len(mine) != len(official):
            raise SystemExit(f"{label}: {len(mine)} configurations here, {len(official)} in {results}")
        gaps = [1 - m / o for m, o in zip(mine, official)]
        lowest, highest = min(lowest, *gaps), max(highest, *gaps)
        print(f"{label}: {len(gaps)} configurations, stitchkit {100 * min(gaps):.2f}-{100 * max(gaps):.2f} % below fvcore")
    print(f"all: {100 * lowest:.2f}-{100 * highest:.2f} % below fvcore")


if __name__ == "__main__":
    main()
