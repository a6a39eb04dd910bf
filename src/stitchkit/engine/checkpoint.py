"""Training checkpoints: safetensors for tensors, a small JSON for the rest.

A checkpoint is two files, ``step-<N>.safetensors`` (model weights and
optimizer state tensors) and ``step-<N>.json`` (step, epoch, batch in epoch,
RNG states, the run's identity, the sha256 of the tensor file). Both are
written atomically, tensors first, so the JSON's presence means the
checkpoint is complete; a run killed at any moment leaves at worst an orphan
tensor file, which is ignored. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pathlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import CheckpointError
from .config import config_hash, differing_keys, write_bytes_atomic, write_json_atomic

FORMAT = 1
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


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
) -> pathlib.Path:
    """Write checkpoint ``step-<state.step>`` atomically; keep the newest ``keep`` (and always this one)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{state.step:08d}"
    weights = directory / f"{stem}.safetensors"
    opt_tensors, opt_meta = optimizer_tensors(optimizer)
    tensors = {**_cpu_tensors("model.", model_state), **_cpu_tensors("", opt_tensors)}
    write_bytes_atomic(weights, save(tensors, metadata={"format": "stitchkit-checkpoint", "version": str(FORMAT)}))
    meta = {
        "format": FORMAT,
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "finished": state.finished,
        "metrics": state.metrics,
        "weights": weights.name,
        "weights_sha256": _sha256(weights),
        "config_hash": config_hash(identity),
        "identity": identity,
        "rng": dict(rng),
        "data_order": dict(data_order),
        "optimizer": opt_meta,
    }
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
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"unsupported checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
        for key in ("step", "epoch", "batch", "weights", "weights_sha256", "config_hash", "identity", "rng", "optimizer"):
            if key not in meta:
                raise ValueError(f"missing field {key!r}")
        if not isinstance(meta["weights"], str) or pathlib.Path(meta["weights"]).name != meta["weights"]:
            raise ValueError(f"tensor file name {meta['weights']!r} is not a plain file name")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({exc}); {hint}") from exc
    if identity is not None and meta["config_hash"] != config_hash(identity):
        keys = differing_keys(meta["identity"], identity)
        raise CheckpointError(
            f"{path}: checkpoint belongs to a run with a different config (differing keys: "
            f"{', '.join(keys) or 'none listed'}); rerun with the original config, or {hint}"
        )
    weights = path.parent / meta["weights"]
    if not weights.is_file():
        raise CheckpointError(f"{path}: its tensor file {weights.name} is missing; {hint}")
    if _sha256(weights) != meta["weights_sha256"]:
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
