"""Distillation teachers: any timm classifier (by name, with timm's or local weights) or a stitchkit model file.

DeiT (and SN-Net, which follows its recipe) distils from a CNN, RegNetY-160;
prediction distillation needs only the teacher's logits, so a teacher need
not be a family stitchkit can stitch. A model whose family an adapter answers
for (the ``ancestry_for_model`` hook: a timm ViT, Swin, ResNet, ConvNeXt,
LeViT or a plugin's) is built through that adapter, so its block and
attention taps are available; any other timm model is a :class:`LogitsTeacher`.
A teacher's weights are final: a checkpoint must fit the named model with the
data's classes exactly (:func:`stitchkit.io.state_dicts.load_strict`).
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.interfaces import AncestryAdapter, TapRequest, Taps


class LogitsTeacher:
    """A frozen classifier that gives logits only (no block or attention taps)."""

    def __init__(self, model: nn.Module, name: str = "") -> None:
        self.model = model
        self.name = name or type(model).__name__

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))

    def forward_taps(self, x: torch.Tensor, request: TapRequest = TapRequest()) -> Taps:
        if request.blocks or request.attentions:
            raise ConfigError(
                f"teacher {self.name} gives logits only, but the loss asks for block/attention taps "
                f"{request}; use a teacher of a family an adapter builds (timm:NAME of a ViT, Swin, ResNet, ConvNeXt, LeViT, or a model file), or prediction distillation only"
            )
        return Taps(logits=self.model(x))


Teacher = AncestryAdapter | LogitsTeacher


def load_teacher(source: str, spec: Any, *, checkpoint: str = "", registry: Any = None) -> Teacher:
    """The teacher named by ``source`` for data of shape ``spec`` (``num_classes``, ``img_size``, ``in_chans``).

    ``"timm:NAME"``: ``timm.create_model(NAME)`` with timm's pretrained
    weights, or with the weights of ``checkpoint`` (safetensors or a
    weights-only ``.pth``, optionally under ``model``/``state_dict``) when
    given. Anything else is the path of a stitchkit model file (``stitchkit
    train``, a trained ancestry or anchor).
    """
    if source.startswith("timm:"):
        return _timm_teacher(source[len("timm:"):], spec, checkpoint, registry)
    if checkpoint:
        raise ConfigError(f"teacher checkpoint {checkpoint!r} applies to a timm:NAME teacher, not to {source!r}")
    from .model import load_model

    path = pathlib.Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(f"teacher {source!r} is neither 'timm:NAME' nor an existing model file")
    teacher = load_model(path, registry)
    if teacher.num_classes != spec.num_classes:
        raise ConfigError(f"teacher {path} predicts {teacher.num_classes} classes, the data has {spec.num_classes}")
    return teacher


def _timm_teacher(name: str, spec: Any, checkpoint: str, registry: Any) -> Teacher:
    """``timm:NAME``: through the adapter the plugins name for it (taps), else a logits-only timm model."""
    from ..core.errors import CheckpointError
    from ..io.state_dicts import load_strict

    if registry is None:
        from ..core.registry import default_registry

        registry = default_registry()
    what = f"timm:{name} with {spec.num_classes} classes"
    data = {"num_classes": spec.num_classes, "in_chans": spec.in_chans, "img_size": spec.img_size}
    try:
        family: str | None = registry.ancestry_for(name)
    except ConfigError:
        family = None  # no adapter builds it: a logits teacher
    adapter = None
    if family is not None:
        try:
            adapter = registry.ancestry(family).from_name(name, pretrained=not checkpoint, **data)
        except ConfigError:  # a variant the adapter does not take (e.g. a distilled DeiT): logits only, below
            adapter = None
    if adapter is not None:
        if checkpoint:
            load_strict(adapter.model, checkpoint, what, f"a teacher's file holds the {family} network trained on the data")
        record = adapter.weights_record or {}
        if record.get("from", {}).get("num_classes", spec.num_classes) != spec.num_classes:
            raise CheckpointError(
                f"teacher timm:{name}: timm's weights predict {record['from']['num_classes']} classes, the data has "
                f"{spec.num_classes}; give a checkpoint of the model trained on the data (teacher_checkpoint)"
            )
        adapter.model.eval()
        return adapter
    import timm

    kwargs: dict[str, Any] = {"num_classes": spec.num_classes, "in_chans": spec.in_chans}
    try:
        try:  # transformers take the data's image size; CNNs have no such argument
            model = timm.create_model(name, pretrained=not checkpoint, img_size=spec.img_size, **kwargs)
        except TypeError:
            model = timm.create_model(name, pretrained=not checkpoint, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown names, no network, missing weights
        hint = "" if checkpoint else "; without network access, give the weights as a local checkpoint file"
        raise ConfigError(f"teacher timm:{name}: {type(exc).__name__}: {exc}{hint}") from None
    if checkpoint:
        load_strict(model, checkpoint, what, "a teacher's file holds the model trained on the data")
    model.eval()
    return LogitsTeacher(model, f"timm:{name}")
