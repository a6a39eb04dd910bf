"""Datasets the engine trains on, and the shape they give the models.

Three sources: scikit-learn's bundled handwritten digits (the default: real
images, no download), any ImageFolder directory (ImageNet layout, timm's
train/eval transforms) and a synthetic source for tests. Whatever the source,
:class:`DataSpec` carries its channels, image size and class count into the
models built for it.

Randomness is a pure function of the run's seed so that a resumed run sees
exactly the images an uninterrupted one would: data order depends on
``(seed, epoch)`` (``DistributedSampler``), and each image's augmentation on
``(seed, epoch, index)`` (:class:`EpochSeeded`).
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..errors import ConfigError

SOURCES = ("digits", "imagefolder", "synthetic")


@dataclass(frozen=True)
class DataSpec:
    """What a model built for the data must accept and predict."""

    in_chans: int
    img_size: int
    num_classes: int

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)


@dataclass
class DataConfig:
    """The ``[data]`` section."""

    source: str = "digits"
    #: ImageFolder root holding ``train/`` and ``val/`` (and optionally ``test/``).
    root: str = ""
    img_size: int = 32
    in_chans: int = 1
    #: Fractions of the whole set held out (digits and synthetic; ImageFolder has its own dirs).
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    augment: bool = True
    #: Largest random shift, as a fraction of the image side (digits / synthetic).
    max_shift: float = 0.125
    #: timm's auto-augment policy for ImageFolder, e.g. "rand-m9-mstd0.5-inc1" ("" = none).
    auto_augment: str = ""
    num_workers: int = 0
    eval_batch_size: int = 256
    #: Synthetic source only.
    synthetic_samples: int = 320
    synthetic_classes: int = 10

    def validate(self, where: str = "data") -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"{where}.source: unknown source {self.source!r}; use one of {', '.join(SOURCES)}")
        if self.img_size < 1:
            raise ConfigError(f"{where}.img_size must be positive, got {self.img_size}")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"{where}.in_chans must be 1 or 3, got {self.in_chans}")
        if self.source == "imagefolder" and self.in_chans != 3:
            raise ConfigError(f"{where}.in_chans: ImageFolder images are RGB; set in_chans = 3")
        if self.source == "imagefolder" and not self.root:
            raise ConfigError(f"{where}.root: the imagefolder source needs root = \"DIR\" (with DIR/train and DIR/val)")
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{where}.{key} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"{where}: val_fraction + test_fraction must leave training images (got {self.val_fraction} + {self.test_fraction})")
        if not 0.0 <= self.max_shift < 0.5:
            raise ConfigError(f"{where}.max_shift must be in [0, 0.5), got {self.max_shift}")
        if self.num_workers < 0 or self.eval_batch_size < 1:
            raise ConfigError(f"{where}: num_workers must be >= 0 and eval_batch_size >= 1")
        if self.synthetic_samples < 2 or self.synthetic_classes < 2:
            raise ConfigError(f"{where}: synthetic_samples and synthetic_classes must be >= 2")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DataConfig:
        from .config import section

        return section(config, "data", cls)


# --------------------------------------------------------------------------- seeding
def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and numpy inside the block; restore their states after.

    Used per image so third-party transforms (timm's) that draw from the
    global generators become a function of the seed. Only the CPU generator
    is touched: ``torch.manual_seed`` would also queue a reseed of every
    accelerator, which costs ~2 ms per call (it records a stack trace) and
    leaks the seed out of the block.
    """
    gen = torch.default_generator
    torch_state = gen.get_state()
    py_state, np_state = random.getstate(), np.random.get_state()
    gen.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class EpochSeeded(Dataset):
    """Wraps a dataset so item ``i`` in epoch ``e`` is drawn with seed ``(seed, e, i)``."""

    def __init__(self, base: Dataset, seed: int = 0) -> None:
        self.base, self.seed, self.epoch = base, seed, 0

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.epoch = epoch
        if seed is not None:
            self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def item_seed(self, index: int) -> int:
        return derive_seed("augment", self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> Any:
        with seeded(self.item_seed(index)):
            return self.base[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A whole batch (the DataLoader's batched fetch): the same items as ``__getitem__``.

        A base with ``seeded_items`` (in-memory tensors) draws each item from
        a private generator seeded like the global one would be, so nothing
        global is saved, seeded and restored per image.
        """
        seeds = [self.item_seed(i) for i in indices]
        batched = getattr(self.base, "seeded_items", None)
        if batched is not None:
            return batched(indices, seeds)  # type: ignore[no-any-return]
        out = []
        for i, seed in zip(indices, seeds):
            with seeded(seed):
                out.append(self.base[i])
        return out


# --------------------------------------------------------------------------- tensor images
class TensorImages(Dataset):
    """Small in-memory images ``(N, C, H, W)`` in [0, 1] with labels, optional random shift.

    Shifts move the image by whole pixels, filling with the background (0);
    the result is normalised to mean 0.5 / std 0.5 per channel.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, max_shift: int = 0) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and N labels, got {tuple(images.shape)} and {len(labels)}")
        self.images, self.labels, self.max_shift = images, labels.long(), int(max_shift)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        s = self.max_shift
        if s:
            dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,)))
            x = torch.roll(F.pad(x, (s, s, s, s)), shifts=(dy, dx), dims=(1, 2))[:, s:-s, s:-s]
        return (x - 0.5) / 0.5, int(self.labels[index])

    def seeded_items(self, indices: Sequence[int], seeds: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Items ``indices``, item ``k``'s shift drawn as ``__getitem__`` would draw it after
        ``torch.manual_seed(seeds[k])``, but from a private generator, in one batched pass."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.images[idx]
        s = self.max_shift
        if s:
            h, w = x.shape[-2:]
            padded = F.pad(x, (s, s, s, s))
            gen = torch.Generator()
            for k, seed in enumerate(seeds):
                gen.manual_seed(seed)
                dy, dx = torch.randint(-s, s + 1, (2,), generator=gen).tolist()
                # roll by (dy, dx) then crop the border == this window of the padded image (|d| <= s)
                x[k] = padded[k, :, s - dy : s - dy + h, s - dx : s - dx + w]
        x = (x - 0.5) / 0.5
        return list(zip(x.unbind(0), self.labels[idx].tolist()))


def _resize(images: torch.Tensor, size: int, in_chans: int) -> torch.Tensor:
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=size < images.shape[-1])
    if in_chans == 3 and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.clamp(0, 1).contiguous()


def split_indices(labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train/val/test index split (scikit-learn's ``train_test_split``).

    Sizes: ``round(test_fraction * N)`` test and ``round(val_fraction * N)`` val images.
    """
    from sklearn.model_selection import train_test_split

    labels_np = np.asarray(labels)
    n = len(labels_np)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    idx = np.arange(n)
    try:
        rest, test = (idx, idx[:0]) if n_test == 0 else train_test_split(idx, test_size=n_test, random_state=seed, stratify=labels_np)
        train, val = (rest, rest[:0]) if n_val == 0 else train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=labels_np[rest])
    except ValueError as exc:  # a split too small to hold every class once
        raise ConfigError(
            f"data: cannot split {n} images of {len(set(labels_np.tolist()))} classes into {n_val} val and {n_test} test "
            f"images with every class in each ({exc}); raise data.val_fraction / data.test_fraction or set them to 0"
        ) from None
    return np.sort(train), np.sort(val), np.sort(test)


# --------------------------------------------------------------------------- the bundle
class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` without padding: each image evaluated once overall."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (resume mid-epoch without loading them)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


@dataclass
class Data:
    """Train / val / test datasets and their :class:`DataSpec`.

    ``train_eval`` is the training split without augmentation: what
    ``eval_loader("train")`` serves (e.g. the images an LS stitch init solves on).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    spec: DataSpec
    config: DataConfig
    train_eval: Dataset | None = None

    def train_sampler(self, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> DistributedSampler:
        """This rank's share of epoch ``epoch``'s order: a function of ``(seed, epoch)``."""
        sampler: DistributedSampler = DistributedSampler(self.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        return sampler

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Optimizer steps per epoch for a *global* batch size (incomplete batches dropped)."""
        per_rank = len(self.train) // world_size  # type: ignore[arg-type]
        return per_rank // (batch_size // world_size)

    def train_loader(self, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1, skip_batches: int = 0) -> DataLoader:
        """Loader over this rank's ``batch_size`` (per-rank) batches of epoch ``epoch``, skipping ``skip_batches``."""
        if isinstance(self.train, EpochSeeded):
            self.train.set_epoch(epoch, seed)
        sampler: Sampler[int] = self.train_sampler(epoch, seed, rank, world_size)
        if skip_batches:
            sampler = SkipSampler(sampler, skip_batches * batch_size)
        # An explicit generator: creating the loader must not draw from the global RNG,
        # or a resumed run's dropout masks would drift from an uninterrupted run's.
        return DataLoader(
            self.train,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(derive_seed("loader", seed, epoch, rank)),
        )

    def eval_loader(self, split: str = "val", *, rank: int = 0, world_size: int = 1, batch_size: int | None = None) -> DataLoader:
        """Each image of ``split`` ("val", "test", or "train" without augmentation) once over all ranks."""
        if split not in ("val", "test", "train"):
            raise ConfigError(f"unknown data split {split!r}; use 'train', 'val' or 'test'")
        ds = {"val": self.val, "test": self.test, "train": self.train if self.train_eval is None else self.train_eval}[split]
        if isinstance(ds, EpochSeeded):
            ds = ds.base
        return DataLoader(
            ds,
            batch_size=batch_size or self.config.eval_batch_size,
            sampler=ShardSampler(len(ds), rank, world_size),  # type: ignore[arg-type]
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(0),
        )

    def val_loader(self, **kw: Any) -> DataLoader:
        return self.eval_loader("val", **kw)

    def test_loader(self, **kw: Any) -> DataLoader:
        return self.eval_loader("test", **kw)


def build_data(cfg: DataConfig) -> Data:
    """The datasets ``cfg`` describes."""
    cfg.validate()
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return _tensor_data(images, torch.tensor(digits.target), 10, cfg)
    if cfg.source == "synthetic":
        images, labels = synthetic_images(cfg.synthetic_samples, cfg.synthetic_classes, cfg.img_size, seed=cfg.split_seed)
        return _tensor_data(images, labels, cfg.synthetic_classes, cfg)
    return _imagefolder_data(cfg)


def synthetic_images(n: int, num_classes: int, size: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` single-channel images in [0, 1]: a fixed random pattern per class plus noise.

    Learnable (the class pattern dominates the noise) and fully determined by ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, 1, size, size, generator=g)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    noise = torch.rand(n, 1, size, size, generator=g)
    return (0.7 * patterns[labels] + 0.3 * noise).clamp(0, 1), labels


def _tensor_data(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: DataConfig) -> Data:
    images = _resize(images, cfg.img_size, cfg.in_chans)
    train_i, val_i, test_i = split_indices(labels.tolist(), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    shift = round(cfg.max_shift * cfg.img_size) if cfg.augment else 0

    def part(idx: np.ndarray, max_shift: int) -> TensorImages:
        t = torch.as_tensor(idx, dtype=torch.long)
        return TensorImages(images[t], labels[t], max_shift=max_shift)

    return Data(
        train=EpochSeeded(part(train_i, shift)),
        val=part(val_i, 0),
        test=part(test_i, 0),
        spec=DataSpec(cfg.in_chans, cfg.img_size, num_classes),
        config=cfg,
        train_eval=part(train_i, 0),
    )


def _imagefolder_data(cfg: DataConfig) -> Data:
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    root = pathlib.Path(cfg.root).expanduser()
    dirs = {name: root / name for name in ("train", "val", "test")}
    for name in ("train", "val"):
        if not dirs[name].is_dir():
            raise ConfigError(
                f"data.root: {dirs[name]} is not a directory; an ImageFolder root needs train/ and val/ "
                f"with one subdirectory of images per class (ImageNet layout)"
            )
    train_tf = create_transform(cfg.img_size, is_training=cfg.augment, auto_augment=cfg.auto_augment or None)
    eval_tf = create_transform(cfg.img_size, is_training=False)
    try:
        train = ImageFolder(str(dirs["train"]), transform=train_tf)
        val = ImageFolder(str(dirs["val"]), transform=eval_tf)
        test = ImageFolder(str(dirs["test"]), transform=eval_tf) if dirs["test"].is_dir() else val
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"data.root: cannot read ImageFolder under {root}: {exc}") from exc
    for name, ds in (("val", val), ("test", test)):
        if ds.classes != train.classes:
            raise ConfigError(
                f"data.root: {dirs[name] if ds is not val or name == 'val' else dirs['val']} has classes "
                f"{ds.classes[:5]}... but train/ has {train.classes[:5]}...; every split needs the same class folders"
            )
    return Data(
        train=EpochSeeded(train),
        val=val,
        test=test,
        spec=DataSpec(3, cfg.img_size, len(train.classes)),
        config=cfg,
        train_eval=ImageFolder(str(dirs["train"]), transform=eval_tf),
    )
