"""A build config resolved: read the TOML file, apply ``--set`` overrides, check the engine's sections.

The engine owns ``[data]``, ``[model]`` and ``[train]`` (their dataclasses live
with the code that uses them); every other table belongs to a method, which
checks it with :func:`stitchkit.engine.config.section`. Generic config helpers
(reading, overrides, sections, hashes) are in :mod:`stitchkit.engine.config`.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.errors import ConfigError
from .config import apply_overrides, read_config_file, section, to_mapping
from .data import DataConfig
from .model import ModelConfig
from .trainer import TrainConfig

#: Top-level keys that are not sections.
TOP_LEVEL_KEYS = ("method", "description", "out_dir")


def engine_sections() -> dict[str, type]:
    """The sections the engine owns and validates: name -> dataclass."""
    return {"data": DataConfig, "train": TrainConfig, "model": ModelConfig}


def resolve(config: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Validate the engine's sections and fill in their defaults.

    Other top-level tables belong to methods, which check them with
    :func:`section`; top-level non-table keys must be one of :data:`TOP_LEVEL_KEYS`.
    """
    resolved = json.loads(json.dumps(config))  # deep copy; also proves it is JSON-able
    for key, value in resolved.items():
        if not isinstance(value, dict) and key in engine_sections():
            raise ConfigError(f"{where}: {key!r} must be a table ([{key}]), got {value!r}")
        if not isinstance(value, dict) and key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, [*TOP_LEVEL_KEYS, *engine_sections()], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: unknown top-level key {key!r}{hint} (top-level keys: "
                f"{', '.join(TOP_LEVEL_KEYS)}; everything else goes in a [section])"
            )
    for key in TOP_LEVEL_KEYS:
        if key in resolved and not isinstance(resolved[key], str):
            raise ConfigError(f"{where}: top-level {key!r} must be a string, got {resolved[key]!r}")
    for name, cls in engine_sections().items():
        try:
            resolved[name] = to_mapping(section(resolved, name, cls))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return resolved


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read ``path``, apply ``overrides`` and return the resolved config."""
    raw = read_config_file(path)
    apply_overrides(raw, overrides)
    return resolve(raw, where=str(path))
