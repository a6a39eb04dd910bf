"""Weight files: reading a state dict safely, and the one strict loader.

Every weight file stitchkit is given (an ancestry's or anchor's checkpoint, a
teacher's, a ``--timm`` export) is read here: timm's reader unwraps the usual
containers and nothing is unpickled. A file that does not fit its model is
one :class:`~stitchkit.core.errors.CheckpointError` naming the first key that
differs and both shapes, found by comparing the two key sets (never by reading
torch's or timm's messages).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.errors import CheckpointError, StitchkitError
from .files import check_regular_file


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only torch file, read by timm.

    timm's reader unwraps ``{'state_dict_ema' | 'model_ema' | 'state_dict' | 'model': ...}``
    (EMA weights first, as timm does) and strips DDP's ``module.`` prefix; nothing is unpickled.
    """
    from timm.models import load_state_dict

    path = pathlib.Path(path).expanduser()
    try:
        check_regular_file(path, "checkpoint file")  # missing, a directory or a FIFO: refused before open
    except StitchkitError as exc:
        raise CheckpointError(str(exc)) from None
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


def shapes(state: Mapping[str, Any]) -> dict[str, list[int]]:
    """Key -> shape (a list of ints) of a state dict."""
    return {k: [int(s) for s in v.shape] for k, v in state.items()}


def first_difference(file: Mapping[str, list[int]], model: Mapping[str, list[int]], skip: Iterable[str] = ()) -> str | None:
    """The first key (in the model's order) where a file's key set and shapes differ from a model's, as a
    phrase naming the key and both shapes; ``None`` when they agree. Keys in ``skip`` are not compared."""
    skipped = set(skip)
    for key, shape in model.items():
        if key in skipped:
            continue
        if key not in file:
            return f"{key} is missing from the file"
        if file[key] != shape:
            return f"{key} is {file[key]} in the file but {shape} in the model"
    extra = [k for k in file if k not in model and k not in skipped]
    return f"{extra[0]} is in the file but not in the model" if extra else None


def load_strict(model: nn.Module, path: str | os.PathLike[str], what: str, hint: str = "") -> None:
    """Load a weight file into ``model``; it must fit exactly (same keys, same shapes), else one
    CheckpointError naming the file, ``what`` the model is, the first key that differs and both shapes."""
    state = read_state_dict(path)
    problem = first_difference(shapes(state), shapes(model.state_dict()))
    if problem is not None:
        tail = f"; {hint}" if hint else ""
        raise CheckpointError(f"{path}: the weights do not fit {what} ({problem}){tail}")
    model.load_state_dict(state, strict=True)


__all__ = ["first_difference", "load_strict", "read_state_dict", "shapes"]
