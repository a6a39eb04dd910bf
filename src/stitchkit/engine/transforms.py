"""Image transforms as config: the ``[data.transform]`` table, handed to timm's ``create_transform``.

Keys are timm's own (``scale``, ``ratio``, ``hflip``, ``auto_augment``,
``interpolation``, ``mean``, ``std``, ``crop_pct``, ...), so a recipe written
for timm's ``train.py`` carries over. Defaults depend on the image size:
timm's ImageNet recipe (random resized crops of 8-100 % of the image, a
centre crop of 87.5 % for evaluation) throws away most of a 32 px image, so
small images (``img_size <= SMALL``) get crops of 50-100 % and are evaluated
uncropped.

The evaluation transform is also what an exported model needs at inference:
:func:`preprocessing` gives it in the form of timm's ``resolve_data_config``
(``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
``crop_mode``), which exports store and ``load_exported(...).transform`` rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError

#: Images up to this side (px) get the small-image defaults.
SMALL = 64
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TransformConfig:
    """The ``[data.transform]`` table (ImageFolder). Empty lists / 0 mean "the default for this image size"."""

    #: Random-resized-crop area range; default [0.08, 1.0] (timm / DeiT), [0.5, 1.0] for small images.
    scale: list[float] = field(default_factory=list)
    #: Random-resized-crop aspect-ratio range; default [3/4, 4/3].
    ratio: list[float] = field(default_factory=list)
    #: Probability of a horizontal / vertical flip while training.
    hflip: float = 0.5
    vflip: float = 0.0
    #: Colour jitter strength (timm's default; 0: off; ignored when auto_augment is set, as in timm).
    color_jitter: float = 0.4
    #: timm's auto-augment policy, e.g. "rand-m9-mstd0.5-inc1" ("" = none).
    auto_augment: str = ""
    #: Random erasing probability while training.
    re_prob: float = 0.0
    #: Resize interpolation for evaluation (and training unless train_interpolation is set).
    interpolation: str = "bilinear"
    #: Training interpolation ("": as interpolation; "random": bilinear or bicubic per image).
    train_interpolation: str = ""
    #: Normalisation; default ImageNet's (timm's IMAGENET_DEFAULT_MEAN / _STD).
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    #: Evaluation: resize the shorter side to img_size / crop_pct, then centre-crop img_size;
    #: default 0.875 (timm), 1.0 for small images (no crop).
    crop_pct: float = 0.0
    #: "center", "squash" (resize both sides, no crop) or "border" (timm's crop modes).
    crop_mode: str = "center"

    def validate(self, where: str = "data.transform") -> None:
        for key in ("scale", "ratio"):
            v = getattr(self, key)
            if v and (len(v) != 2 or not 0 < v[0] <= v[1]):
                raise ConfigError(f"{where}.{key} must be two numbers [low, high] with 0 < low <= high, got {v}")
        if self.scale and self.scale[1] > 1.0:
            raise ConfigError(f"{where}.scale is a share of the image area: at most 1.0, got {self.scale}")
        for key in ("hflip", "vflip", "re_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{where}.{key} is a probability in [0, 1], got {getattr(self, key)}")
        if self.color_jitter < 0:
            raise ConfigError(f"{where}.color_jitter must be >= 0, got {self.color_jitter}")
        for key in ("interpolation", "train_interpolation"):
            v = getattr(self, key)
            if v and v not in INTERPOLATIONS:
                raise ConfigError(f"{where}.{key}: unknown interpolation {v!r}; use one of {', '.join(INTERPOLATIONS)}")
        if self.interpolation == "random":
            raise ConfigError(f"{where}.interpolation: 'random' is for training only (train_interpolation)")
        if bool(self.mean) != bool(self.std) or (self.mean and len(self.mean) != len(self.std)):
            raise ConfigError(f"{where}: give mean and std together, one value per channel (got {self.mean} and {self.std})")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}.std must be positive, got {self.std}")
        if not 0.0 <= self.crop_pct <= 1.0:
            raise ConfigError(f"{where}.crop_pct must be in (0, 1] (0: the default for the image size), got {self.crop_pct}")
        if self.crop_mode not in ("center", "squash", "border"):
            raise ConfigError(f"{where}.crop_mode must be 'center', 'squash' or 'border', got {self.crop_mode!r}")
        if self.auto_augment:
            try:
                from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

                make = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}.get(self.auto_augment.split("-")[0], auto_augment_transform)
                make(self.auto_augment, {"translate_const": 10, "img_mean": (124, 116, 104)})
            except Exception as exc:  # noqa: BLE001 - timm's parser raises AssertionError / KeyError
                raise ConfigError(f"{where}.auto_augment: timm cannot parse policy {self.auto_augment!r} ({exc or type(exc).__name__})") from None

    def is_default(self) -> bool:
        return self == TransformConfig()


def is_small(img_size: int) -> bool:
    return img_size <= SMALL


def preprocessing(cfg: TransformConfig, img_size: int, in_chans: int = 3) -> dict[str, Any]:
    """The evaluation transform as timm's data config (``resolve_data_config`` keys)."""
    # grey images: one value, the mean of ImageNet's three (as timm reduces a 3-channel config to 1 channel)
    mean = list(cfg.mean) or ([sum(IMAGENET_MEAN) / 3] if in_chans == 1 else list(IMAGENET_MEAN))
    std = list(cfg.std) or ([sum(IMAGENET_STD) / 3] if in_chans == 1 else list(IMAGENET_STD))
    if len(mean) not in (1, in_chans):
        raise ConfigError(f"data.transform.mean has {len(mean)} values but the images have {in_chans} channels")
    return {
        "input_size": [in_chans, img_size, img_size],
        "interpolation": cfg.interpolation,
        "mean": mean,
        "std": std,
        "crop_pct": cfg.crop_pct or (1.0 if is_small(img_size) else 0.875),
        "crop_mode": cfg.crop_mode,
    }


def train_options(cfg: TransformConfig, img_size: int) -> dict[str, Any]:
    """Keyword arguments of ``timm.data.create_transform(..., is_training=True)``."""
    return {
        "scale": tuple(cfg.scale) if cfg.scale else ((0.5, 1.0) if is_small(img_size) else (0.08, 1.0)),
        "ratio": tuple(cfg.ratio) if cfg.ratio else (3 / 4, 4 / 3),
        "hflip": cfg.hflip,
        "vflip": cfg.vflip,
        "color_jitter": cfg.color_jitter or None,
        "auto_augment": cfg.auto_augment or None,
        "re_prob": cfg.re_prob,
        "interpolation": cfg.train_interpolation or cfg.interpolation,
    }


def create_train_transform(cfg: TransformConfig, pre: dict[str, Any]) -> Any:
    from timm.data import create_transform

    from ..io.preprocessing import with_channels

    tf = create_transform(tuple(pre["input_size"]), is_training=True, mean=tuple(pre["mean"]), std=tuple(pre["std"]), **train_options(cfg, pre["input_size"][-1]))
    return with_channels(tf, int(pre["input_size"][0]))
