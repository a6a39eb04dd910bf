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


def eval_transform(pre: Mapping[str, Any]) -> Any:
    """timm's evaluation transform: resize to ``size / crop_pct``, centre crop, to tensor, normalise."""
    from timm.data import create_transform

    return create_transform(
        tuple(pre["input_size"]),
        is_training=False,
        interpolation=pre["interpolation"],
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        crop_pct=pre["crop_pct"],
        crop_mode=pre.get("crop_mode", "center"),
    )


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
