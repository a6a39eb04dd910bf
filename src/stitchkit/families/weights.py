"""Starting weights for any timm family: timm's downloads or a local file, adapted by timm.

A checkpoint saved for ImageNet (224 px, 1000 classes, RGB) rarely has the
shape of the user's data. timm already knows how to adapt one when it loads
its own pretrained weights: each family's checkpoint filter resamples the
position embeddings (or relative-position tables), and ``load_pretrained``
adapts the first convolution to another number of input channels.
:func:`create_timm_model` routes a *local file* through exactly that path
(``pretrained_cfg_overlay=dict(file=...)``), so a file and ``pretrained=True``
behave the same, for every family an adapter wraps.

timm is asked to load the weights strictly into a model with the file's own
class count; the classifier is then reset by building the model of the target
shape (timm's own initialisation of a new head) and moving every other tensor
into it, comparing the two key sets. A file of another architecture is one
:class:`~stitchkit.core.errors.CheckpointError` naming the first key that
differs and both shapes (:func:`stitchkit.io.state_dicts.first_difference`).
It returns what was adapted (a JSON-able record, the provenance every
adapter keeps as ``weights_record``).
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

from torch import nn

from ..core.errors import CheckpointError, ConfigError
from ..io.state_dicts import first_difference, read_state_dict, shapes

log = logging.getLogger("stitchkit")


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _keys(modules: tuple[str, ...]) -> set[str]:
    return {f"{m}.{p}" for m in modules for p in ("weight", "bias")}


def _create(name: str, kind: type | None, family: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` refused with a ConfigError when it cannot build ``name`` as a ``kind`` network."""
    import timm

    try:
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError:
            if "weight_init" not in kwargs:  # a family without that option: it is not ``kind``, said below
                raise
            model = timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "weight_init"})
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        if kwargs.get("pretrained") and not isinstance(exc, TypeError):
            raise  # a load failure: the caller names the key
        raise ConfigError(f"timm could not create {name!r}{f' for the {family} adapter' if family else ''}: {exc}") from exc
    if kind is not None and not isinstance(model, kind):
        raise ConfigError(f"timm model {name!r} is a {type(model).__name__}, not a {kind.__name__}: the {family} adapter cannot take it")
    return model


def create_timm_model(
    name: str,
    kind: type | None = None,
    family: str = "",
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``timm.create_model(name, **kwargs)`` with timm's weights (``pretrained``) or a local file.

    ``kwargs`` carry the target shape (``num_classes``, ``img_size``, ``in_chans``, ...);
    ``kind`` (e.g. timm's ``SwinTransformer``) is the class the ``family`` adapter takes.
    A file goes through timm's pretrained loader, so it is adapted exactly as
    timm's own weights would be. The file's class count and input channels are
    read from its classifier and first convolution (named by the model's
    ``pretrained_cfg``), so a file already shaped for the data keeps its head.
    Returns the model and a record of the weights' source and what was adapted
    (``None`` for a random init).
    """
    import timm

    if ":" not in name and not timm.is_model(name):  # "hf-hub:..." and "local-dir:..." names resolve in timm
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else " (timm.list_models() lists them)"
        raise ConfigError(f"timm has no model {name!r}{hint}")
    if not checkpoint and not pretrained:
        return _create(name, kind, family, **kwargs), None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - e.g. an "hf-hub:" name: timm resolves its cfg while creating
        cfg = None
    cfg_dict: dict[str, Any] = cfg.to_dict() if cfg is not None else {}
    classifier, first_conv = _names(cfg_dict.get("classifier")), _names(cfg_dict.get("first_conv"))
    src_classes = int(cfg_dict.get("num_classes") or 1000)
    src_input = tuple(cfg_dict.get("input_size") or (3, 224, 224))
    record: dict[str, Any] = {"timm_name": name, "source": "timm" if not checkpoint else "file"}
    overlay: dict[str, Any] = {}
    file: dict[str, list[int]] | None = None  # the file's tensor shapes (timm reads the tensors itself)
    if checkpoint:
        path = pathlib.Path(checkpoint).expanduser()
        file = shapes(read_state_dict(path))
        heads = [k for k in classifier if f"{k}.weight" in file]
        src_classes = file[f"{heads[0]}.weight"][0] if heads else (0 if classifier else src_classes)  # 0: a headless file
        conv = next((file[f"{k}.weight"] for k in first_conv if len(file.get(f"{k}.weight", ())) == 4), None)
        if conv is not None:
            src_input = (conv[1], *src_input[1:])
        overlay = {"file": str(path), "source": "", "num_classes": src_classes, "input_size": src_input}
        record["file"] = str(path)
    target_classes = int(kwargs.get("num_classes", src_classes))
    target_chans = int(kwargs.get("in_chans", src_input[0]))
    where = overlay.get("file") or f"timm's {name} weights"

    def wrong(problem: str) -> CheckpointError:
        return CheckpointError(f"{where}: the weights are not those of timm's {name!r} ({problem}); "
                               "set timm_name to the architecture the file was saved from")

    # timm loads strictly into a model with the file's classes: every key must fit, or it raises
    try:
        model = _create(name, kind, family, pretrained=True, pretrained_cfg_overlay=overlay or None,
                        **{**kwargs, "num_classes": src_classes})
    except (RuntimeError, ValueError, KeyError, AssertionError) as exc:  # torch's strict load; a family filter failing on foreign keys
        if file is None:
            raise ConfigError(f"timm could not load its weights for {name!r}: {exc}") from exc
        import torch

        with torch.device("meta"):
            shaped = _create(name, kind, family, **{**kwargs, "num_classes": src_classes})
        expected = shapes(shaped.state_dict())
        for key in _keys(first_conv):  # timm adapts a first convolution's input channels and kernel: compare its outputs
            if len(file.get(key, ())) == 4 and len(expected.get(key, ())) == 4:
                file[key] = [file[key][0], *expected[key][1:]]
        problem = first_difference(file, expected)
        raise wrong(problem or str(exc).strip().splitlines()[0]) from None
    if target_classes != src_classes:  # timm's classifier reset: a new head, every other tensor moved over
        loaded = {k: v for k, v in model.state_dict().items() if k not in _keys(classifier)}
        model = _create(name, kind, family, **kwargs)
        missing, unexpected = model.load_state_dict(loaded, strict=False)
        stray = [k for k in [*unexpected, *missing] if k not in _keys(classifier)]
        if stray:
            raise wrong(f"{stray[0]} does not carry over to a {target_classes}-class model")
    record["from"] = {"num_classes": src_classes, "in_chans": int(src_input[0])}
    if file is None:  # timm's weights: their size is in the pretrained cfg (a file's is in its tensors, see "resized")
        record["from"]["img_size"] = list(src_input[1:])
    record["to"] = {"num_classes": target_classes, "in_chans": target_chans}
    if "img_size" in kwargs:
        record["to"]["img_size"] = kwargs["img_size"]
    adapted: list[str] = []
    if target_classes != src_classes:
        adapted.append(f"classifier reset ({src_classes} -> {target_classes} classes, new weights)")
    if target_chans != src_input[0]:
        adapted.append(f"first convolution adapted ({src_input[0]} -> {target_chans} input channels)")
    if file is not None:
        current = shapes(model.state_dict())
        resized = {k: (v, current[k]) for k, v in file.items() if k in current and v != current[k]}
        record["resized"] = {k: {"file": a, "model": b} for k, (a, b) in sorted(resized.items())}
        own = _keys(first_conv) | _keys(classifier)
        adapted += [f"{k} resampled {a} -> {b}" for k, (a, b) in sorted(resized.items()) if k not in own]
    elif "img_size" in kwargs and _size(kwargs["img_size"]) != list(src_input[1:]):
        adapted.append(f"position information resampled ({src_input[1]} -> {_size(kwargs['img_size'])[0]} px)")
    record["adapted"] = adapted
    log.info("stitchkit: loaded %s%s", where, f"; adapted: {'; '.join(adapted)}" if adapted else " unchanged")
    return model, record


def _size(value: Any) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


__all__ = ["create_timm_model"]
