"""Ancestry top-1 on a digits ImageFolder: the small-image transform defaults vs timm's ImageNet recipe.

Writes scikit-learn's 1797 handwritten digits as 8x8 PNG files in one folder per
class (a flat ImageFolder: stitchkit splits it 1258 / 180 / 359, stratified,
seeded), then trains the same ViT with the same budget under each transform:

* ``imagenet``: the transform ImageFolder data had before ``[data.transform]``
  (timm's training defaults: random resized crop of 8-100 % of the area, flip,
  colour jitter; evaluation resize to 32 / 0.875 and centre crop 32);
* ``small``: the defaults for images of at most 64 px (crops of 50-100 %, evaluated uncropped);
* ``none``: no augmentation (``augment = false``), evaluated like ``small``;
* ``small-noflip``, ``small-0.8``: ``small`` without flips / with crops of 80-100 %.

    python benchmarks/small_image_transforms.py [--epochs 15] [--out /tmp/stitchkit-transforms]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import time

import numpy as np

VARIANTS = {
    "imagenet": {"augment": True, "transform": {"scale": [0.08, 1.0], "crop_pct": 0.875}},
    "small": {"augment": True, "transform": {}},
    "none": {"augment": False, "transform": {}},
    "small-noflip": {"augment": True, "transform": {"hflip": 0.0}},
    "small-0.8": {"augment": True, "transform": {"scale": [0.8, 1.0]}},
}


def write_digits(root: pathlib.Path) -> int:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    return len(digits.target)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="/tmp/stitchkit-transforms")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from stitchkit.engine import train_model
    from stitchkit.engine.model import model_info

    out = pathlib.Path(args.out)
    root = out / "digits"
    if not root.is_dir():
        print(f"wrote {write_digits(root)} PNG files under {root}")
    results = {}
    for name in args.variants.split(","):
        config = {
            "data": {"source": "imagefolder", "root": str(root), "img_size": 32, "in_chans": 3, **VARIANTS[name]},
            "model": {"depth": 6, "embed_dim": 64, "num_heads": 4, "patch_size": 8},
            "train": {"seed": 0, "epochs": args.epochs, "batch_size": 64, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 1.0,
                      "progress": False, "eval_every": 0, "device": "cpu"},
        }
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        path = train_model(config, out / name)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        info = model_info(path)
        results[name] = {
            "test_top1": info["evaluation"]["test"]["top1"],
            "steps": info["steps"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), 1),
            "splits": {k: v["images"] for k, v in info["data"]["splits"].items()},
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
