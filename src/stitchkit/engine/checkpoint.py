"""Training checkpoints: safetensors for tensors, a small JSON for the rest.

A checkpoint is two files, ``step-<N>.safetensors`` (model weights and
optimizer state tensors) and ``step-<N>.json`` (step, epoch, batch in epoch,
RNG states, the run's identity, the sha256 of the tensor file). Both are
written atomically, tensors first, so the JSON's presence means the
checkpoint is complete; a run killed at any moment leaves at worst an orphan
tensor file, which is ignored. Nothing is ever unpickled.

Integrity covers both files: the JSON stores the tensor file's sha256 and
an ``integrity`` sha256 of its own canonical form (every other field), so an
edited step count or RNG state is refused like a flipped weight byte; every
field is type-checked on read, and a bad RNG state is an error, never a
silent reseed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import random
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..core.errors import CheckpointError, FileError
from ..io.files import check_regular_file, file_sha256
from .config import config_hash, differing_keys, write_bytes_atomic, write_json_atomic

FORMAT = 2  # 2: the JSON carries an integrity hash of itself
_NAME = re.compile(r"^step-(\d{8,})\.json$")


@dataclass
class TrainState:
    """Where a run stands: ``step`` optimizer steps done; ``batch`` of them in epoch ``epoch``."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    finished: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- RNG states
def b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


def numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def set_numpy_rng_state(s: Mapping[str, Any]) -> None:
    np.random.set_state((s["name"], np.array(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"]))


# --------------------------------------------------------------------------- tensors
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state split into tensors (``optim.<i>.<key>``) and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = json.loads(json.dumps(sd["param_groups"]))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Restore the optimizer from a checkpoint; anything that does not fit is a :class:`CheckpointError`."""
    try:
        _load_optimizer(optimizer, tensors, meta)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint optimizer state does not fit this run's optimizer ({type(exc).__name__}: {exc}); "
            "delete the phase's checkpoints/ directory (or use --restart) to start over"
        ) from exc


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, rest in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(rest)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _cpu_tensors(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _integrity(meta: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of every field but ``integrity`` itself."""
    body = {k: v for k, v in meta.items() if k != "integrity"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _check_rng(rng: Any) -> None:
    """Raise ValueError unless ``rng`` is a state this module wrote (so restoring it cannot fail or mislead)."""
    if not isinstance(rng, dict):
        raise ValueError("rng is not an object")
    if not _is_int(rng.get("world_size"), 1):
        raise ValueError("rng.world_size is not a positive integer")
    expected = int(torch.get_rng_state().numel())
    for key in ("torch_cpu", "torch_cuda"):
        if key not in rng and key == "torch_cuda":
            continue
        states = rng.get(key)
        if not isinstance(states, list) or len(states) != rng["world_size"]:
            raise ValueError(f"rng.{key} is not a list of {rng['world_size']} states")
        for s in states:
            try:
                raw = base64.b64decode(s, validate=True) if isinstance(s, str) else None
            except ValueError:
                raw = None
            if raw is None or (key == "torch_cpu" and len(raw) != expected):
                raise ValueError(f"rng.{key} holds a state that is not base64 of a {expected}-byte generator state")
    py = rng.get("python")
    if not (isinstance(py, list) and len(py) == 3 and _is_int(py[0]) and isinstance(py[1], list) and len(py[1]) == 625
            and all(_is_int(x) and x < 2**32 for x in py[1]) and (py[2] is None or isinstance(py[2], float))):
        raise ValueError("rng.python is not a Python random state")
    npy = rng.get("numpy")
    if not (isinstance(npy, dict) and npy.get("name") == "MT19937" and isinstance(npy.get("keys"), list)
            and len(npy["keys"]) == 624 and all(_is_int(x) and x < 2**32 for x in npy["keys"])
            and _is_int(npy.get("pos")) and npy["pos"] <= 624 and _is_int(npy.get("has_gauss")) and npy["has_gauss"] <= 1
            and isinstance(npy.get("cached_gaussian"), (int, float)) and not isinstance(npy.get("cached_gaussian"), bool)):
        raise ValueError("rng.numpy is not a numpy MT19937 state")


_TYPES: dict[str, Any] = {
    "step": _is_int, "epoch": _is_int, "batch": _is_int,
    "finished": lambda v: isinstance(v, bool),
    "metrics": lambda v: isinstance(v, dict),
    "weights": lambda v: isinstance(v, str) and pathlib.Path(v).name == v and v.endswith(".safetensors"),
    "weights_sha256": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    "config_hash": lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
    "identity": lambda v: isinstance(v, dict),
    "data_order": lambda v: isinstance(v, dict),
    "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list) and isinstance(v.get("scalars"), dict),
    "integrity": lambda v: isinstance(v, str),
}


def _check_meta(meta: Any, path: pathlib.Path) -> None:
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"unsupported checkpoint format {meta.get('format')!r} (this stitchkit reads {FORMAT})")
    for key, ok in _TYPES.items():
        if key not in meta:
            raise ValueError(f"missing field {key!r}")
        if not ok(meta[key]):
            raise ValueError(f"field {key!r} has an invalid value {str(meta[key])[:60]!r}")
    if meta["integrity"] != _integrity(meta):
        raise ValueError("its integrity hash does not match its content (the JSON was edited or damaged)")
    if meta["weights"] != path.with_suffix(".safetensors").name:
        raise ValueError(f"it names tensor file {meta['weights']!r}, not its own {path.with_suffix('.safetensors').name!r}")
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != meta["step"]:
        raise ValueError(f"its file name says step {int(m.group(1))} but it records step {meta['step']}")
    _check_rng(meta["rng"])


# --------------------------------------------------------------------------- files
def checkpoint_files(directory: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """Complete checkpoints (their JSON files) in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    directory: pathlib.Path,
    state: TrainState,
    model_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    identity: Mapping[str, Any],
    rng: Mapping[str, Any],
    data_order: Mapping[str, Any],
    keep: int = 2,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> pathlib.Path:
    """Write checkpoint ``step-<state.step>`` atomically; keep the newest ``keep`` (and always this one).

    ``extra`` tensors (e.g. ``ema.*``, the moving average) are stored under their own names beside ``model.*``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{state.step:08d}"
    weights = directory / f"{stem}.safetensors"
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors = {**_cpu_tensors("model.", model_state), **_cpu_tensors("", opt_tensors), **_cpu_tensors("", extra or {})}
    write_bytes_atomic(weights, save(tensors, metadata={"format": "pt", "stitchkit_format": "stitchkit-checkpoint", "version": str(FORMAT)}))
    meta = {
        "format": FORMAT,
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "finished": state.finished,
        "metrics": state.metrics,
        "weights": weights.name,
        "weights_sha256": file_sha256(weights, "checkpoint tensor file"),
        "config_hash": config_hash(identity),
        "identity": identity,
        "rng": dict(rng),
        "data_order": dict(data_order),
        "optimizer": opt_meta,
    }
    meta["integrity"] = _integrity(meta)
    path = directory / f"{stem}.json"
    write_json_atomic(path, meta)
    _prune(directory, keep, protect=path)
    return path


def _prune(directory: pathlib.Path, keep: int, protect: pathlib.Path) -> None:
    done = checkpoint_files(directory)
    live = {p.with_suffix(".safetensors").name for _, p in done[-max(keep, 1):]} | {protect.with_suffix(".safetensors").name}
    for _, p in done[: -max(keep, 1)]:
        if p != protect:
            p.unlink(missing_ok=True)
            p.with_suffix(".safetensors").unlink(missing_ok=True)
    for p in directory.iterdir():  # orphans and temp files of killed writes
        if (p.suffix == ".safetensors" and p.name not in live) or (p.name.startswith(".") and p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)


def read_checkpoint(path: pathlib.Path, identity: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON and tensors of checkpoint ``path`` (its ``.json``), verified.

    Raises :class:`CheckpointError` if the JSON is unreadable, the tensor file
    is missing or altered (sha256), or ``identity`` differs from the run that
    wrote it (naming the differing keys).
    """
    hint = f"delete {path.parent} (or choose another output directory) to start over"
    try:
        check_regular_file(path, "checkpoint file")
        meta = json.loads(path.read_text(encoding="utf-8"))
        _check_meta(meta, path)
    except FileError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}); {hint}") from exc
    if identity is not None and meta["config_hash"] != config_hash(identity):
        keys = differing_keys(meta["identity"], identity)
        raise CheckpointError(
            f"{path}: checkpoint belongs to a run with a different config (differing keys: "
            f"{', '.join(keys) or 'none listed'}); rerun with the original config, or {hint}"
        )
    weights = path.parent / meta["weights"]
    if not weights.is_file() or not stat.S_ISREG(os.stat(weights).st_mode):
        raise CheckpointError(f"{path}: its tensor file {weights.name} is missing; {hint}")
    if file_sha256(weights, "checkpoint tensor file") != meta["weights_sha256"]:
        raise CheckpointError(f"{weights}: corrupt checkpoint (sha256 does not match {path.name}); {hint}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt checkpoint ({exc}); {hint}") from exc
    return meta, tensors


def model_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def load_model_state(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: os.PathLike[str] | str) -> None:
    """Load ``model.*`` tensors into ``module`` exactly (every key, every shape)."""
    state = model_tensors(tensors)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: checkpoint does not fit the model being trained (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]}, wrong shape: {wrong[:5]}); it was written for another model"
        )
    module.load_state_dict(state, strict=True)
