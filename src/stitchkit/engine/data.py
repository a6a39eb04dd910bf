"""Datasets the engine trains on, and the shape they give the models.

Sources: scikit-learn's bundled handwritten digits (the default: real
images, no download), Fashion-MNIST and MNIST from their official idx files
(:mod:`stitchkit.engine.idx`; the official test split, validation split off
the training set), any ImageFolder directory (ImageNet layout, timm's
train/eval transforms) and a synthetic source for tests. A seeded, stratified
subset of the training split (``train_images``) sizes a CPU run. Whatever the source,
:class:`DataSpec` carries its channels, image size and class count into the
models built for it.

Randomness is a pure function of the run's seed so that a resumed run sees
exactly the images an uninterrupted one would: data order depends on
``(seed, epoch)`` (``DistributedSampler``), and each image's augmentation on
``(seed, epoch, index)`` (:class:`EpochSeeded`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import pathlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..core import limits
from ..core.errors import ConfigError
from .config import from_mapping, section, to_mapping
from ..io.preprocessing import eval_transform
from .transforms import TransformConfig, create_train_transform, preprocessing

SOURCES = ("digits", "fashion-mnist", "mnist", "imagefolder", "synthetic")
#: Sources in the MNIST file format, with an official test split.
IDX_SOURCES = ("fashion-mnist", "mnist")


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
    #: ImageFolder root: ``train/`` (+ ``val/``, ``test/``), or one folder per class (split here);
    #: fashion-mnist / mnist: the folder of the four idx files (fashion-mnist default: Debian's package).
    root: str = ""
    img_size: int = 32
    in_chans: int = 1
    #: Fractions of the whole set held out (digits, synthetic, and an ImageFolder's missing val/ or test/).
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    #: Train on a seeded (``split_seed``), stratified subset of this many training images (0: all of them).
    train_images: int = 0
    augment: bool = True
    #: Largest random shift, as a fraction of the image side (digits / synthetic).
    max_shift: float = 0.125
    #: ImageFolder transforms: the ``[data.transform]`` table (:class:`~stitchkit.engine.transforms.TransformConfig`).
    transform: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    eval_batch_size: int = 256
    #: Synthetic source only.
    synthetic_samples: int = 320
    synthetic_classes: int = 10

    def validate(self, where: str = "data") -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"{where}.source: unknown source {self.source!r}; use one of {', '.join(SOURCES)}")
        limits.check_int(self.img_size, f"{where}.img_size", maximum=limits.MAX_IMG_SIZE, limit="MAX_IMG_SIZE")
        limits.check_int(self.eval_batch_size, f"{where}.eval_batch_size", maximum=limits.MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE")
        limits.check_int(self.synthetic_classes, f"{where}.synthetic_classes", minimum=2, maximum=limits.MAX_CLASSES, limit="MAX_CLASSES")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"{where}.in_chans must be 1 or 3, got {self.in_chans}")
        if self.source == "mnist" and not self.root:
            raise ConfigError(f"{where}.root: the mnist source needs root = \"DIR\" (a folder with train-images-idx3-ubyte[.gz] and the other three files)")
        if self.train_images < 0:
            raise ConfigError(f"{where}.train_images must be >= 0 (0: every training image), got {self.train_images}")
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
        self.transform = to_mapping(from_mapping(TransformConfig, self.transform, f"{where}.transform"))
        self._check_applicable(where)

    def _check_applicable(self, where: str) -> None:
        """Options of another source, set to a non-default value, are an error rather than ignored."""
        default = DataConfig()
        only = {
            "root": ("imagefolder", *IDX_SOURCES),
            "test_fraction": ("digits", "synthetic", "imagefolder"),
            "transform": ("imagefolder",),
            "max_shift": ("digits", "synthetic", *IDX_SOURCES),
            "synthetic_samples": ("synthetic",),
            "synthetic_classes": ("synthetic",),
        }
        for key, sources in only.items():
            value = getattr(self, key)
            unset = value == getattr(default, key) or (key == "transform" and value == dataclasses.asdict(TransformConfig()))
            if self.source not in sources and not unset:
                raise ConfigError(
                    f"{where}.{key} = {value!r} does not apply to source {self.source!r} (only to {' / '.join(sources)}); remove it"
                )

    @property
    def transforms(self) -> TransformConfig:
        return TransformConfig(**self.transform)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DataConfig:
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
    #: Where each split came from: a folder, or a stratified seeded share (fraction, seed, images, sha256 of the members).
    splits: dict[str, Any] = field(default_factory=dict)
    #: Class names in label order.
    classes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The evaluation transform as timm's data config (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``).

        Digits and synthetic images are already tensors here; the config describes the
        equivalent transform of an image file (bilinear resize, mean 0.5 / std 0.5, no crop).
        """
        if self.config.source == "imagefolder":
            return preprocessing(self.config.transforms, self.spec.img_size, self.spec.in_chans)
        n = self.spec.in_chans
        return {"input_size": [n, self.spec.img_size, self.spec.img_size], "interpolation": "bilinear",
                "mean": [0.5] * n, "std": [0.5] * n, "crop_pct": 1.0, "crop_mode": "center"}

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
    if cfg.source in IDX_SOURCES:
        return _idx_data(cfg)
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


def _idx_data(cfg: DataConfig) -> Data:
    """Fashion-MNIST / MNIST: val split off the training files, the official test files as the test split."""
    from . import idx

    train, test = idx.read_dataset(cfg.root, cfg.source)
    images = torch.from_numpy(np.concatenate([train.images, test.images])).unsqueeze(1).float().div_(255.0)
    labels = torch.from_numpy(np.concatenate([train.labels, test.labels]))
    data = _tensor_data(images, labels, 10, cfg, official_test=len(train.labels), classes=idx.CLASSES[cfg.source])
    data.splits["test"] = {"from": f"{test.files[0]} (official test split)", "images": data.splits["test"]["images"],
                           "sha256": data.splits["test"]["sha256"]}
    data.splits["train"]["files"] = list(train.files)
    return data


def train_subset(train_i: np.ndarray, labels: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """``cfg.train_images`` of ``train_i``, stratified by label and seeded by ``split_seed`` (all when 0)."""
    n = cfg.train_images
    if n == 0 or n == len(train_i):
        return train_i
    if n > len(train_i):
        raise ConfigError(f"data.train_images = {n} but the training split has {len(train_i)} images; lower it or set 0 (all)")
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(train_i, train_size=n, random_state=cfg.split_seed + 2, stratify=labels[train_i])
    except ValueError as exc:
        raise ConfigError(f"data.train_images = {n} is too few to hold every class of the training split ({exc}); raise it") from None
    return np.sort(keep)


def _tensor_data(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: DataConfig, *,
                 official_test: int = 0, classes: list[str] | None = None) -> Data:
    """In-memory images split seeded and stratified; with ``official_test``, images from that index on are the test split."""
    images = _resize(images, cfg.img_size, cfg.in_chans)
    labels_np = labels.numpy()
    if official_test:
        train_i, val_i, _ = split_indices(labels_np[:official_test].tolist(), cfg.val_fraction, 0.0, cfg.split_seed)
        test_i = np.arange(official_test, len(labels_np))
    else:
        train_i, val_i, test_i = split_indices(labels_np.tolist(), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    split_train_i = train_i
    train_i = train_subset(train_i, labels_np, cfg)
    shift = round(cfg.max_shift * cfg.img_size) if cfg.augment else 0

    def part(idx: np.ndarray, max_shift: int) -> TensorImages:
        t = torch.as_tensor(idx, dtype=torch.long)
        return TensorImages(images[t], labels[t], max_shift=max_shift)

    if official_test:
        names = {i: f"{cfg.source}:train[{i}]" if i < official_test else f"{cfg.source}:t10k[{i - official_test}]" for i in range(len(labels))}
    else:
        names = {i: f"{cfg.source}[{i}]" for i in range(len(labels))}
    splits = _split_record(cfg, {"train": train_i, "val": val_i, "test": test_i}, names, cfg.source, cfg.source)
    if len(train_i) != len(split_train_i):
        splits["train"].update(subset_of=int(len(split_train_i)), seed=cfg.split_seed, stratified=True)
    return Data(
        train=EpochSeeded(part(train_i, shift)),
        val=part(val_i, 0),
        test=part(test_i, 0),
        spec=DataSpec(cfg.in_chans, cfg.img_size, num_classes),
        config=cfg,
        train_eval=part(train_i, 0),
        splits=splits,
        classes=classes or [str(c) for c in range(num_classes)],
    )


def _split_record(cfg: DataConfig, parts: dict[str, np.ndarray], names: Any, origin: str, shared: str) -> dict[str, Any]:
    """Each split's origin, size and a sha256 of its members (to check two runs used the same images)."""
    record: dict[str, Any] = {}
    for split, idx in parts.items():
        members = "\n".join(names[int(i)] for i in idx)
        entry: dict[str, Any] = {"from": origin, "images": int(len(idx)), "sha256": hashlib.sha256(members.encode()).hexdigest()}
        if split != "train":
            entry.update(fraction=getattr(cfg, f"{split}_fraction"), seed=cfg.split_seed, stratified=True)
        record[split] = entry
    return record


def _class_difference(a: list[str], b: list[str], name_a: str, name_b: str) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    parts = [f"{name_a} has {only_a} that {name_b} lacks" if only_a else "", f"{name_b} has {only_b} that {name_a} lacks" if only_b else ""]
    return "; ".join(p for p in parts if p)


def _imagefolder_data(cfg: DataConfig) -> Data:
    """train/ (+ val/, test/), or a flat class folder; a missing val/ or test/ is split off the training images.

    With train/ and val/ but no test/ (ImageNet's layout), val/ is the test split too. The folders are
    walked once, each file counted once and in one split, and every image opened (:mod:`.imagefolder`).
    """
    from .imagefolder import FolderWalk, WalkedImageFolder, check_images  # torchvision: only ImageFolder sources pay its import

    root = pathlib.Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a directory; give an ImageFolder root (train/, val/, test/ or one folder per class)")
    has = {name: (root / name).is_dir() for name in ("train", "val", "test")}
    if not has["train"] and (has["val"] or has["test"]):
        raise ConfigError(f"data.root: {root} has {'val/' if has['val'] else 'test/'} but no train/; add train/ with one folder of images per class")
    base = root / "train" if has["train"] else root
    origin = "train/" if has["train"] else "root"
    fractions = {"val": cfg.val_fraction if not has["val"] else 0.0, "test": cfg.test_fraction if not (has["test"] or has["val"]) else 0.0}
    default = DataConfig()
    for split, reason in (("val", "val/"), ("test", "test/" if has["test"] else "val/ (it is also the test split)")):
        if fractions[split] == 0.0 and getattr(cfg, f"{split}_fraction") != getattr(default, f"{split}_fraction") and (has[split] or has["val"]):
            raise ConfigError(
                f"data.{split}_fraction does not apply: {root} has {reason}; remove the key, or remove {split}/ to split it off {origin}"
            )
    tcfg = cfg.transforms
    pre = preprocessing(tcfg, cfg.img_size, cfg.in_chans)  # the transforms convert every image to in_chans
    eval_tf = eval_transform(pre)
    train_tf = create_train_transform(tcfg, pre) if cfg.augment else eval_tf
    walk = FolderWalk()
    walk.reserve([str(base)] + [str(root / name) for name in ("val", "test") if has[name]])
    full = WalkedImageFolder(str(base), walk, "data.root", transform=train_tf)
    folders = {name: WalkedImageFolder(str(root / name), walk, "data.root", transform=eval_tf) for name in ("val", "test") if has[name]}
    walk.warn("data.root")
    for name, ds in folders.items():
        if ds.classes != full.classes:
            raise ConfigError(
                f"data.root: {name}/ and {origin} have different class folders ({_class_difference(full.classes, ds.classes, origin, name + '/')}); "
                "every split needs the same class folders"
            )
    check_images([p for ds in (full, *folders.values()) for p, _ in ds.samples], "data.root")  # before the first phase
    full_eval = copy.copy(full)
    full_eval.transform = eval_tf
    labels = [t for _, t in full.samples]
    train_i, val_i, test_i = split_indices(labels, fractions["val"], fractions["test"], cfg.split_seed)
    split_train = len(train_i)
    train_i = train_subset(train_i, np.asarray(labels), cfg)
    names = [str(pathlib.Path(p).relative_to(base)) for p, _ in full.samples]
    splits = _split_record(cfg, {"train": train_i}, names, origin, origin)
    if len(train_i) != split_train:
        splits["train"].update(subset_of=split_train, seed=cfg.split_seed, stratified=True)
    if not has["val"]:
        splits.update(_split_record(cfg, {"val": val_i}, names, f"{origin} (split)", origin))
    if not (has["test"] or has["val"]):
        splits.update(_split_record(cfg, {"test": test_i}, names, f"{origin} (split)", origin))
    for name, ds in folders.items():
        rel = "\n".join(str(pathlib.Path(p).relative_to(root / name)) for p, _ in ds.samples)
        splits[name] = {"from": f"{name}/", "images": len(ds), "sha256": hashlib.sha256(rel.encode()).hexdigest()}
    if has["val"] and not has["test"]:
        splits["test"] = {**splits["val"], "from": "val/ (also the test split)"}

    def subset(ds: Dataset, idx: np.ndarray) -> Dataset:
        return ds if len(idx) == len(full) else Subset(ds, idx.tolist())

    val = folders.get("val") or subset(full_eval, val_i)
    test = folders.get("test") or (folders["val"] if has["val"] else subset(full_eval, test_i))
    return Data(
        # seeded per image only when augmenting: the evaluation transform draws nothing
        train=EpochSeeded(subset(full, train_i)) if cfg.augment else subset(full, train_i),
        val=val,
        test=test,
        spec=DataSpec(cfg.in_chans, cfg.img_size, len(full.classes)),
        config=cfg,
        train_eval=subset(full_eval, train_i),
        splits=splits,
        classes=list(full.classes),
    )
