"""What the ImageFolder walk and up-front image check cost next to one epoch of loading (issue 24).

    python benchmarks/image_check.py /tmp/fm70k/data --make 70000

``--make N`` first writes N Fashion-MNIST-sized images (28x28 grey PNGs, ten
class folders; a class pattern plus noise) into the folder. Then, each timed
once on the same folder: the walk (:class:`~stitchkit.engine.imagefolder.FolderWalk`:
every file stat-ed, loops and links resolved), the check
(:func:`~stitchkit.engine.imagefolder.check_images`: every image opened and
verified), and one epoch of the training loader at the same image size
(``Data.train_loader``: decode, timm's train transform, batches of 256, one
process), all in one process with one torch thread. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def make(root: str, n: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, 256, (10, 28, 28))
    for c in range(10):
        os.makedirs(f"{root}/c{c}", exist_ok=True)
    for i in range(n):
        img = (0.7 * pattern[i % 10] + 0.3 * rng.integers(0, 256, (28, 28))).astype(np.uint8)
        Image.fromarray(img, "L").save(f"{root}/c{i % 10}/{i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--make", type=int, default=0, help="first write this many 28x28 PNGs into root")
    ap.add_argument("--img-size", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.make:
        make(args.root, args.make)

    from stitchkit.engine.data import DataConfig, build_data
    from stitchkit.engine.imagefolder import FolderWalk, WalkedImageFolder, check_images

    t0 = time.perf_counter()
    walk = FolderWalk()
    walk.reserve([args.root])
    folder = WalkedImageFolder(args.root, walk, "data.root")
    walked = time.perf_counter() - t0
    paths = [p for p, _ in folder.samples]
    t0 = time.perf_counter()
    check_images(paths, "data.root")
    checked = time.perf_counter() - t0

    data = build_data(DataConfig(source="imagefolder", root=args.root, in_chans=3, img_size=args.img_size,
                                 val_fraction=0.0, test_fraction=0.0))
    t0 = time.perf_counter()
    batches = sum(1 for _ in data.train_loader(args.batch_size, epoch=0, seed=0))
    epoch = time.perf_counter() - t0
    print(json.dumps({
        "images": len(paths), "walk_s": round(walked, 2), "check_s": round(checked, 2),
        "check_us_per_image": round(1e6 * checked / len(paths), 1), "epoch_s": round(epoch, 2), "batches": batches,
        "walk_plus_check_over_epoch": round((walked + checked) / epoch, 3),
    }))


if __name__ == "__main__":
    main()
