"""Run configs: one TOML file plus ``key.sub=value`` overrides, validated.

Every run is described by a plain nested dict (the *resolved* config): the
file, the overrides applied, and the defaults of the engine's own sections
filled in. It is saved next to the outputs so a run can be repeated exactly
(``stitchkit build out/resolved.json``), and hashed so a checkpoint is only
resumed by the run that wrote it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import pathlib
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ..core.errors import ConfigError, FileError
from ..io.files import check_regular_file
from ..io.files import write_bytes_atomic as write_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")



def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys of ``mapping`` not in ``allowed``, suggesting close matches."""
    allowed = sorted(allowed)
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint} (known keys: {', '.join(allowed) or 'none'})"
            )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field type; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            if alt is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, alt, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")  # pragma: no cover


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """Build the dataclass ``cls`` from ``mapping``, checking keys and value types."""
    mapping = dict(mapping or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    check_keys(mapping, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in mapping.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def section(config: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """The ``[name]`` section of ``config`` as the dataclass ``cls`` (defaults filled in)."""
    value = config.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"config: {name!r} must be a table ([{name}]), got {value!r}")
    return from_mapping(cls, value, name)


def to_mapping(obj: Any) -> dict[str, Any]:
    """A config dataclass as a plain dict (for the resolved config)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> ``(["train", "lr"], 0.001)``; values are TOML, bare words strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise ConfigError(f"override {text!r}: empty part in key {key!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not raw or any(c in raw for c in "[]{}\"'="):
            raise ConfigError(
                f"override {text!r}: cannot parse value {raw!r} as TOML "
                f"(quote strings that contain brackets, quotes or '=')"
            ) from None
        value = raw
    return [p.strip() for p in parts], value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides in place (creating tables as needed)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = config
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a table"
                )
            node = child
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(parts)} is a table; set one of its keys")
        node[parts[-1]] = value
    return config


# --------------------------------------------------------------------------- files
def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config from TOML, or from a resolved ``.json`` written by a previous run."""
    path = pathlib.Path(path)
    try:
        check_regular_file(path, "config file")
    except FileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid {'JSON' if path.suffix == '.json' else 'TOML'} file: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: the config nests tables too deeply to read; a config is a few levels deep") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table at the top level")
    return data


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON through a temp file in the same directory and ``os.replace``."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` atomically (:func:`stitchkit.io.files.write_bytes_atomic`)."""
    write_atomic(path, payload)


def save_resolved(config: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Save the resolved config as ``out_dir/resolved.json`` (re-runnable as a config)."""
    path = pathlib.Path(out_dir) / "resolved.json"
    write_json_atomic(path, config)
    return path


# --------------------------------------------------------------------------- identity
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Flattened keys whose values differ between two configs (or exist in one only)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, _MISSING) != fb.get(k, _MISSING))


_MISSING = object()
