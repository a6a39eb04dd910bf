"""The MNIST file format (idx): Fashion-MNIST and MNIST from their four official files.

The files are read whole (28x28 greyscale, 70,000 images: 55 MB as bytes) and
checked before use, so a truncated download or a swapped file is one clear
error naming the file instead of a shape error deep in training. Gzipped and
plain files both work; the Debian package's folder, the original download's
flat folder and torchvision's ``<Name>/raw/`` layout are all found.
"""

from __future__ import annotations

import gzip
import pathlib
from dataclasses import dataclass

import numpy as np

from ..core.errors import ConfigError

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_ROOT = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
#: torchvision's download folder under a root.
TORCHVISION_FOLDER = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
#: Class names in label order (Fashion-MNIST's README, "Labels").
CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}
HOW_TO_GET = {
    "fashion-mnist": "install it with 'apt-get install dataset-fashion-mnist' or set data.root to a folder holding the four files",
    "mnist": "set data.root to a folder holding the four files (or torchvision's MNIST/raw/)",
}
#: Published test top-1 (%) on Fashion-MNIST, from the README of the Debian package
#: (/usr/share/doc/dataset-fashion-mnist/README.md.gz, "Benchmark"): reference lines for reports and plots.
BASELINES = {
    "fashion-mnist": [
        ("human (1,000 test images, no fashion expertise)", 83.5),
        ("MLP 256-128-100", 88.33),
        ("2 conv + pooling (smallest CNN listed)", 87.6),
        ("2 conv + 2 FC, horizontal flips (best 2-conv CNN)", 93.9),
        ("WRN40-4, 8.9M params (best listed)", 96.7),
    ],
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


@dataclass(frozen=True)
class IdxSplit:
    """One split: ``images`` uint8 ``(N, H, W)``, ``labels`` int64 ``(N,)``, and the files read."""

    images: np.ndarray
    labels: np.ndarray
    files: tuple[str, str]


def default_root(source: str) -> str:
    return DEBIAN_ROOT.get(source, "")


def find_file(root: pathlib.Path, source: str, stem: str) -> pathlib.Path:
    """``stem`` (e.g. ``train-images-idx3-ubyte``), gzipped or not, in ``root`` or torchvision's ``root/<Name>/raw``."""
    folders = [root, root / TORCHVISION_FOLDER[source] / "raw"]
    for folder in folders:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise ConfigError(f"data.root: {root / (stem + '.gz')} not found (nor {stem} there or under "
                      f"{TORCHVISION_FOLDER[source]}/raw/); {HOW_TO_GET[source]}")


def read_idx(path: pathlib.Path, magic: int, source: str) -> np.ndarray:
    """The array in an idx file of unsigned bytes whose magic number is ``magic`` (checked with its size)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"data.root: cannot read {path} ({exc}); the file is damaged, {HOW_TO_GET[source]}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise ConfigError(f"data.root: {path} is not an idx file of {'images' if magic == IMAGES_MAGIC else 'labels'} "
                          f"(magic number {found if found is None else hex(found)}, expected {hex(magic)}); {HOW_TO_GET[source]}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) + header
    if len(raw) != expected:
        raise ConfigError(f"data.root: {path} holds {len(raw)} bytes but its header {shape} needs {expected} "
                          f"(truncated or damaged); {HOW_TO_GET[source]}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split(root: pathlib.Path, source: str, prefix: str, num_classes: int = 10) -> IdxSplit:
    """The ``prefix`` (``train`` or ``t10k``) images and labels, checked against each other."""
    ipath = find_file(root, source, f"{prefix}-images-idx3-ubyte")
    lpath = find_file(root, source, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(ipath, IMAGES_MAGIC, source)
    labels = read_idx(lpath, LABELS_MAGIC, source).astype(np.int64)
    if len(images) != len(labels):
        raise ConfigError(f"data.root: {ipath} has {len(images)} images but {lpath} has {len(labels)} labels; "
                          f"the files are from different sets, {HOW_TO_GET[source]}")
    if len(images) == 0 or images.shape[1] != images.shape[2]:
        raise ConfigError(f"data.root: {ipath} holds {images.shape[0]} images of {images.shape[1]}x{images.shape[2]}; "
                          f"expected square images, {HOW_TO_GET[source]}")
    bad = np.flatnonzero(labels >= num_classes)
    if len(bad):
        raise ConfigError(f"data.root: {lpath} has label {int(labels[bad[0]])} at index {int(bad[0])}, outside 0..{num_classes - 1}; "
                          f"{HOW_TO_GET[source]}")
    return IdxSplit(images, labels, (str(ipath), str(lpath)))


def read_dataset(root: str, source: str) -> tuple[IdxSplit, IdxSplit]:
    """The training and the official test split of ``source`` under ``root`` (default: the Debian folder)."""
    folder = pathlib.Path(root or default_root(source)).expanduser()
    if not str(folder) or not folder.is_dir():
        raise ConfigError(f"data.root: {folder} is not a directory; {HOW_TO_GET[source]}")
    train, test = read_split(folder, source, "train"), read_split(folder, source, "t10k")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ConfigError(f"data.root: training images are {train.images.shape[1:]} but test images {test.images.shape[1:]} "
                          f"({train.files[0]}, {test.files[0]}); {HOW_TO_GET[source]}")
    return train, test
