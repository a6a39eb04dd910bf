"""``stitchkit build CONFIG [--set k=v] [--out DIR]``: run a method's whole pipeline.

The config names its method (``method = "learngene-pool"``); the method's
``build`` does the rest through the engine, which makes every phase
resumable: rerunning the same command after a crash continues where it
stopped. Works unchanged under ``torchrun --nproc_per_node N``.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..engine.config import config_hash, save_resolved
from ..engine.settings import load_config
from ..engine.distributed import barrier, dist_context
from ..engine.runlog import append_run_record, read_run_records
from ..core.errors import ConfigError
from ..io.files import OutputLock, file_sha256
from ..core.registry import Registry, default_registry


def resolve_out_dir(config: dict, config_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    """``--out``, else the config's top-level ``out_dir``, else ``runs/<config name>``."""
    if out_dir is not None:
        return pathlib.Path(out_dir)
    if config.get("out_dir"):
        return pathlib.Path(config["out_dir"])
    return pathlib.Path("runs") / pathlib.Path(config_path).stem


def clear_checkpoints(out_dir: pathlib.Path) -> int:
    """Delete the training checkpoints and metrics of every phase under ``out_dir`` (``--restart``)."""
    removed = 0
    for ckpt in out_dir.glob("*/checkpoints/step-*"):
        if ckpt.suffix in (".json", ".safetensors"):
            ckpt.unlink()
            removed += 1
    for metrics in out_dir.glob("*/metrics.jsonl"):
        metrics.unlink()
    return removed


@dataclass(frozen=True)
class BuildResult:
    """A build's pool file, and whether it was already there: a finished build of the same config, untouched."""

    pool: pathlib.Path
    unchanged: bool = False


def finished_pool(out: pathlib.Path, config: dict) -> pathlib.Path | None:
    """The pool file the last build of exactly ``config`` in ``out`` wrote, if it is still the file written.

    A rerun of a finished build then needs no phase and no evaluation (minutes on
    a CPU for the descendants alone); any change to the config or the file builds again.
    """
    want = config_hash(config)
    for record in reversed(read_run_records(out)):
        if record.get("event") != "build" or record.get("config_sha256") != want or record.get("unchanged"):
            continue  # an "unchanged" record points back at the build that wrote the file
        pool = pathlib.Path(record.get("pool", ""))
        if "pool_sha256" in record and pool.is_file() and file_sha256(pool) == record["pool_sha256"]:
            return pool
        return None
    return None


def build_command(
    config_path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    *,
    registry: Registry | None = None,
) -> pathlib.Path:
    """Load the config, find its method and run ``method.build``; return the pool file (see :func:`run_build`)."""
    return run_build(config_path, overrides, out_dir, resume, registry=registry).pool


def run_build(
    config_path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    *,
    registry: Registry | None = None,
) -> BuildResult:
    """Load the config, find its method and run ``method.build``; return the pool file.

    A finished build of the same config whose pool file is untouched is not run
    again (``unchanged``). ``resume=False`` deletes the checkpoints of a previous run in the output
    directory first, so every phase starts over.
    """
    config = load_config(config_path, overrides)
    name = config.get("method")
    if not name:
        raise ConfigError(f"{config_path}: no method given; add e.g. method = \"learngene-pool\" at the top of the file")
    registry = registry or default_registry()
    method = registry.method(name)
    out = resolve_out_dir(config, config_path, out_dir)
    config["out_dir"] = str(out)
    method.check_config(config, registry=registry)  # the whole config, before the first phase
    ctx = dist_context(config["train"]["device"])
    lock = OutputLock(out, f"stitchkit build {config_path}") if ctx.is_main else None
    try:
        if lock is not None:
            lock.acquire()  # one writer per output directory; the OS drops it if we die
            if not resume:
                clear_checkpoints(out)
            save_resolved(config, out)
        done = finished_pool(out, config) if resume else None
        barrier()
        if done is not None:
            if ctx.is_main:
                append_run_record(out, {"event": "build", "method": name, "config_sha256": config_hash(config), "pool": str(done),
                                        "unchanged": True, "wall_s": 0.0})
            return BuildResult(done, unchanged=True)
        started = time.perf_counter()
        pool = method.build(config, out_dir=out, registry=registry)
        if ctx.is_main:
            from ..apps.cards import write_pool_card

            write_pool_card(pool)  # POOL.md beside the pool: its model card, from the file's metadata
            append_run_record(out, {"event": "build", "method": name, "config_sha256": config_hash(config), "pool": str(pool),
                                    "pool_sha256": file_sha256(pathlib.Path(pool)), "wall_s": round(time.perf_counter() - started, 3)})
        return BuildResult(pathlib.Path(pool))
    finally:
        if lock is not None:
            lock.release()
