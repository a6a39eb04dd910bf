"""Starting weights for any timm model: timm's downloads or a local file, adapted by timm.

A checkpoint saved for ImageNet (224 px, 1000 classes, RGB) rarely has the
shape of the user's data. timm already knows how to adapt one when it loads
its own pretrained weights: each family's checkpoint filter resamples the
position embeddings (or relative-position tables), ``load_pretrained`` resets
a classifier whose class count differs and adapts the first convolution to
another number of input channels. :func:`create_timm_model` routes a *local
file* through exactly that path (``pretrained_cfg_overlay=dict(file=...)``),
so a file and ``pretrained=True`` behave the same, for every family.

It returns what was adapted (a JSON-able record), which callers log and store
with their results; a file of another architecture is one
:class:`~stitchkit.core.errors.CheckpointError` naming the first key that does not fit.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError, ConfigError
from ..io.files import check_regular_file

log = logging.getLogger("stitchkit")

#: torch's load_state_dict messages, in the order torch reports them.
_SIZE = re.compile(r"size mismatch for ([^:]+): copying a param with shape (?:torch\.Size\()?(\[[^\]]*\])\)? from checkpoint, the shape in current model is (?:torch\.Size\()?(\[[^\]]*\])\)?")
_MISSING = re.compile(r'Missing key\(s\) in state_dict: "([^"]+)"')
_UNEXPECTED = re.compile(r'Unexpected key\(s\) in state_dict: "([^"]+)"')


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only torch file, read by timm.

    timm's reader unwraps ``{'state_dict_ema' | 'model_ema' | 'state_dict' | 'model': ...}``
    (EMA weights first, as timm does) and strips DDP's ``module.`` prefix; nothing is unpickled.
    """
    from timm.models import load_state_dict

    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refused, truncated file, not safetensors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable weights file ({type(exc).__name__}: {first}); "
            "use a .safetensors file or a .pth holding only tensors (torch.save(model.state_dict(), ...))"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'model' or 'state_dict'), found {type(state).__name__}")
    return dict(state)


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _shape(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape]


def mismatch(exc: BaseException) -> str:
    """The first key torch could not load, with both shapes, from its ``load_state_dict`` error."""
    text = str(exc)
    m = _SIZE.search(text)
    if m:
        return f"{m.group(1)} is {m.group(2)} in the file but {m.group(3)} in the model"
    m = _MISSING.search(text)
    if m:
        return f"{m.group(1)} is missing from the file"
    m = _UNEXPECTED.search(text)
    if m:
        return f"{m.group(1)} is in the file but not in the model"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def create_timm_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``timm.create_model(name, **kwargs)`` with timm's weights (``pretrained``) or a local file.

    ``kwargs`` carry the target shape (``num_classes``, ``img_size``, ``in_chans``, ...).
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
        return timm.create_model(name, **kwargs), None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - e.g. an "hf-hub:" name: timm resolves its cfg while creating
        cfg = None
    cfg_dict: dict[str, Any] = cfg.to_dict() if cfg is not None else {}
    src_classes = int(cfg_dict.get("num_classes") or 1000)
    src_input = tuple(cfg_dict.get("input_size") or (3, 224, 224))
    record: dict[str, Any] = {"timm_name": name, "source": "timm" if not checkpoint else "file"}
    overlay: dict[str, Any] = {}
    shapes: dict[str, list[int]] | None = None  # the file's tensor shapes (timm reads the tensors itself)
    if checkpoint:
        path = pathlib.Path(checkpoint).expanduser()
        state = read_state_dict(path)
        for key in _names(cfg_dict.get("classifier")):
            if f"{key}.weight" in state:
                src_classes = int(state[f"{key}.weight"].shape[0])
                break
        else:
            if cfg_dict.get("classifier"):
                src_classes = 0  # headless file: timm drops the (absent) classifier
        for key in _names(cfg_dict.get("first_conv")):
            weight = state.get(f"{key}.weight")
            if weight is not None and weight.ndim == 4:
                src_input = (int(weight.shape[1]), *src_input[1:])
                break
        overlay = {"file": str(path), "source": "", "num_classes": src_classes, "input_size": src_input}
        record["file"] = str(path)
        shapes = {k: _shape(v) for k, v in state.items()}
        del state  # before timm reads the file again: one copy of the weights in memory at a time
    target_classes = kwargs.get("num_classes", src_classes)
    target_chans = kwargs.get("in_chans", src_input[0])
    wrong = (f"{overlay.get('file')}: the weights are not those of timm's {name!r} (", "); set timm_name to the architecture the file was saved from")
    with _TimmLoadReport() as report:
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay or None, **kwargs)
        except Exception as exc:  # noqa: BLE001 - torch's size mismatch, or a family's checkpoint filter failing on foreign keys
            if shapes is None:
                raise
            raise CheckpointError(f"{wrong[0]}{mismatch(exc)}{wrong[1]}") from None
    # timm loads non-strictly once it has dropped a classifier: only the classifier may be missing.
    heads = {f"{c}.{p}" for c in _names(cfg_dict.get("classifier")) for p in ("weight", "bias")}
    missing = [k for k in report.missing if k not in heads]
    if shapes is not None and (report.unexpected or missing):
        first = f"{report.unexpected[0]} is in the file but not in the model" if report.unexpected else f"{missing[0]} is missing from the file"
        raise CheckpointError(f"{wrong[0]}{first}{wrong[1]}")
    record["from"] = {"num_classes": src_classes, "in_chans": int(src_input[0])}
    if shapes is None:  # timm's weights: their size is in the pretrained cfg (a file's is in its tensors, see "resized")
        record["from"]["img_size"] = list(src_input[1:])
    record["to"] = {"num_classes": int(target_classes), "in_chans": int(target_chans)}
    if "img_size" in kwargs:
        record["to"]["img_size"] = kwargs["img_size"]
    adapted: list[str] = []
    if target_classes != src_classes:
        adapted.append(f"classifier reset ({src_classes} -> {target_classes} classes, new weights)")
    if target_chans != src_input[0]:
        adapted.append(f"first convolution adapted ({src_input[0]} -> {target_chans} input channels)")
    if shapes is not None:
        current = {k: _shape(v) for k, v in model.state_dict().items()}
        resized = {k: (v, current[k]) for k, v in shapes.items() if k in current and v != current[k]}
        record["resized"] = {k: {"file": a, "model": b} for k, (a, b) in sorted(resized.items())}
        own = {f"{c}.{p}" for c in (*_names(cfg_dict.get("first_conv")), *_names(cfg_dict.get("classifier"))) for p in ("weight", "bias")}
        adapted += [f"{k} resampled {a} -> {b}" for k, (a, b) in sorted(resized.items()) if k not in own]
    elif "img_size" in kwargs and _size(kwargs["img_size"]) != list(src_input[1:]):
        adapted.append(f"position information resampled ({src_input[1]} -> {_size(kwargs['img_size'])[0]} px)")
    record["adapted"] = adapted
    where = record.get("file", f"timm's {name} weights")
    log.info("stitchkit: loaded %s%s", where, f"; adapted: {'; '.join(adapted)}" if adapted else " unchanged")
    return model, record


class _TimmLoadReport:
    """The missing / unexpected keys timm reports after loading pretrained weights non-strictly."""

    _logger = logging.getLogger("timm.models._builder")
    _KEYS = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading")

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self._handler = logging.Handler()
        self._handler.emit = self._emit  # type: ignore[method-assign]

    def _emit(self, record: logging.LogRecord) -> None:
        m = self._KEYS.match(record.getMessage())
        if m:
            keys = [k.strip() for k in m.group(2).split(",") if k.strip()]
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(keys)

    def __enter__(self) -> _TimmLoadReport:
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False  # timm's own lines stay quiet; stitchkit logs what was adapted
        self._logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


def _size(value: Any) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def load_strict(model: nn.Module, path: str | os.PathLike[str], what: str) -> None:
    """Load a file into a model built from an explicit arch (no timm name): it must fit exactly."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit {what} ({mismatch(exc)}); save the file from a model of this arch, or give its timm_name so timm adapts it") from None



def load_state_file(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a weights-only torch file (:func:`stitchkit.families.weights.read_state_dict`)."""
    check_regular_file(path, "checkpoint file")  # missing, a directory or a FIFO: refused before open

    return read_state_dict(path)


__all__ = ["create_timm_model", "load_state_file", "load_strict", "mismatch", "read_state_dict"]
