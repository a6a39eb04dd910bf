"""CPU time per training image of the digits loader (augmented, batch 64), and a hash of the batches.

    OMP_NUM_THREADS=1 python benchmarks/data_loading.py [--epochs 3]

The hash proves a faster loader serves the same images: it must not change
between versions that claim to draw the same augmentation.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from stitchkit.engine.data import DataConfig, build_data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    data = build_data(DataConfig(source="digits", img_size=16))
    n, digest = 0, hashlib.sha256()
    start = time.process_time()
    for epoch in range(args.epochs):
        for images, labels in data.train_loader(64, epoch=epoch, seed=0):
            n += len(labels)
            digest.update(images.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    cpu = time.process_time() - start
    print(f"{n} images in {cpu:.2f} s CPU: {1e6 * cpu / n:.1f} us/image; sha256 of the batches {digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
