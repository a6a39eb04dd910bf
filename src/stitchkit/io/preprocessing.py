"""What a model expects of an image: timm's data config, stored with every exported model.

The keys are those of timm's ``resolve_data_config`` (``input_size``,
``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``), so the
evaluation transform of a stored config is timm's ``create_transform``, and a
loaded model carrying it as ``pretrained_cfg`` also works with
``timm.data.resolve_data_config(model=model)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class ToChannels:
    """Convert a PIL image to the model's channels (``L`` for 1, ``RGB`` for 3) before timm's transform.

    So a grey image file works with a 3-channel model and a colour one with a
    1-channel model, as both occur in one folder of real images. A class, not a
    lambda, so DataLoader worker processes can pickle it.
    """

    def __init__(self, in_chans: int) -> None:
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, img: Any) -> Any:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToChannels(mode={self.mode!r})"


def with_channels(transform: Any, in_chans: int) -> Any:
    """``transform`` preceded by :class:`ToChannels` (timm's transforms are a ``Compose``)."""
    from torchvision import transforms

    return transforms.Compose([ToChannels(in_chans), *getattr(transform, "transforms", [transform])])


def eval_transform(pre: Mapping[str, Any]) -> Any:
    """timm's evaluation transform (resize to ``size / crop_pct``, centre crop, to tensor, normalise), after
    converting the image to the model's channels."""
    from timm.data import create_transform

    return with_channels(create_transform(
        tuple(pre["input_size"]),
        is_training=False,
        interpolation=pre["interpolation"],
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        crop_pct=pre["crop_pct"],
        crop_mode=pre.get("crop_mode", "center"),
    ), int(pre["input_size"][0]))


def attach(model: nn.Module, data: Mapping[str, Any] | None) -> nn.Module:
    """Give a loaded model ``transform``, ``classes`` and timm's ``pretrained_cfg`` from stored data info.

    ``data`` is ``{"preprocessing": {...}, "classes": [...]}`` (or None for a file
    written before they were stored: then ``transform`` and ``classes`` are None).
    """
    pre = dict((data or {}).get("preprocessing") or {})
    classes = (data or {}).get("classes")
    # plain attributes (not parameters or submodules), set as timm sets pretrained_cfg on its models
    setattr(model, "preprocessing", pre or None)  # noqa: B010
    setattr(model, "classes", list(classes) if classes else None)  # noqa: B010
    setattr(model, "transform", eval_transform(pre) if pre else None)  # noqa: B010
    if pre:
        tuples = {k: tuple(pre[k]) for k in ("input_size", "mean", "std")}  # timm's own types
        setattr(model, "pretrained_cfg", {**pre, **tuples, "num_classes": len(classes) if classes else None})  # noqa: B010
    return model
