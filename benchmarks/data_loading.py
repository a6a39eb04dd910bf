"""CPU time per training image of a loader, and a hash of the batches.

    OMP_NUM_THREADS=1 python benchmarks/data_loading.py [--epochs 3]
    OMP_NUM_THREADS=1 python benchmarks/data_loading.py --data fashion-mnist [--images 6000]

digits (default): the digits loader (augmented, batch 64). The hash proves a
faster loader serves the same images: it must not change between versions
that claim to draw the same augmentation.

fashion-mnist: the idx source (data.train_images of the official training
files, batch 128, with and without its shift augmentation) against an
ImageFolder of the same images written here as grey PNGs (in_chans = 1,
without augmentation: the same work, load and normalise), and that folder
through the evaluation loader (what the training loader costs without
per-image random state); prints each and the idx / ImageFolder ratio. Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import tempfile
import time

from stitchkit.engine.data import DataConfig, build_data


def per_image(data, batch: int, epochs: int) -> tuple[int, float, str]:
    n, digest = 0, hashlib.sha256()
    start = time.process_time()
    for epoch in range(epochs):
        for images, labels in data.train_loader(batch, epoch=epoch, seed=0):
            n += len(labels)
            digest.update(images.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    return n, time.process_time() - start, digest.hexdigest()


def evaluation(data, batch: int) -> tuple[int, float, str]:
    """The same images through the evaluation loader (no per-image seeding ever): the floor for the training loader."""
    n, start = 0, time.process_time()
    for images, labels in data.eval_loader("train", batch_size=batch):
        n += len(labels)
    return n, time.process_time() - start, ""


def fashion_mnist(images: int, epochs: int) -> None:
    import numpy as np
    from PIL import Image

    from stitchkit.engine.idx import CLASSES

    common = dict(img_size=28, in_chans=1, val_fraction=0.0, test_fraction=0.0)
    idx = {aug: build_data(DataConfig(source="fashion-mnist", train_images=images, augment=aug, max_shift=0.0715 if aug else 0.125,
                                      val_fraction=1 / 12, img_size=28, in_chans=1)) for aug in (False, True)}
    base = idx[False].train
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for k in range(len(base)):
            x, y = base[k]
            folder = root / f"{y}-{CLASSES['fashion-mnist'][y].replace('/', '-')}"
            folder.mkdir(exist_ok=True)
            Image.fromarray(((x[0].numpy() * 0.5 + 0.5) * 255).round().astype(np.uint8), "L").save(folder / f"{k}.png")
        folder_data = build_data(DataConfig(source="imagefolder", root=str(root), augment=False, **common))
        results = {"idx source": per_image(idx[False], 128, epochs), "idx source, shift augmentation": per_image(idx[True], 128, epochs),
                   "ImageFolder of the same PNGs": per_image(folder_data, 128, epochs),
                   "ImageFolder, evaluation loader": evaluation(folder_data, 128)}
    for name, (n, cpu, _) in results.items():
        print(f"{name:32s} {n} images in {cpu:.2f} s CPU: {1e6 * cpu / n:.1f} us/image, {n / cpu:,.0f} images/s")
    a, b = results["idx source"], results["ImageFolder of the same PNGs"]
    print(f"idx source / ImageFolder images per second: {(a[0] / a[1]) / (b[0] / b[1]):.1f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--images", type=int, default=6000, help="fashion-mnist: training images (a stratified subset)")
    args = p.parse_args(argv)
    if args.data == "fashion-mnist":
        fashion_mnist(args.images, args.epochs)
        return 0
    data = build_data(DataConfig(source="digits", img_size=16))
    n, cpu, digest = per_image(data, 64, args.epochs)
    print(f"{n} images in {cpu:.2f} s CPU: {1e6 * cpu / n:.1f} us/image; sha256 of the batches {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
