"""Pick the most accurate descendant of a pool that fits a budget.

Budgets are parameters, MACs (per image) or latency in milliseconds measured
here, on the current device, at a given batch size. Latency needs the
descendant's weights, so candidates are loaded lazily one at a time from the
pool file (only their own tensors are read).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..core.errors import BudgetError, ConfigError
from ..pool.measure import measure_latency
from ..core.registry import Registry
from ..core import limits
from .report import file_descendants_table


def parse_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists here (default: cuda if available, else cpu)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported for latency; use cpu or cuda")
    return dev


def select_descendant(
    pool_file: str | os.PathLike,
    *,
    max_params: int | None = None,
    max_macs: int | None = None,
    max_latency_ms: float | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    registry: Registry | None = None,
    metric: str = "top1",
) -> dict[str, Any]:
    """The descendant with the best stored ``metric`` among those within every budget given.

    Returns its table row (index, name, params, MACs, accuracy, and
    ``latency_ms`` when a latency budget was given). Raises
    :class:`BudgetError` naming the smallest option when nothing fits.
    """
    from ..io.storage import load_descendant, read_pool_structure  # local: imports torch; the CLI imports this module at start

    if max_params is None and max_macs is None and max_latency_ms is None:
        raise ConfigError("give at least one budget: max_params, max_macs or max_latency_ms")
    limits.check_int(batch_size, "batch size", maximum=limits.MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE")
    for name, value in (("max_params", max_params), ("max_macs", max_macs)):
        if value is not None:
            limits.check_int(value, name, minimum=0, maximum=2**63 - 1)
    if max_latency_ms is not None:
        limits.check_number(max_latency_ms, "max_latency_ms", minimum=0.0, exclusive_minimum=True)
    device = parse_device(device)
    # the whole pool rebuilt on the meta device (no weights read): never recommend from a file that cannot load
    meta, _ = read_pool_structure(pool_file, registry)
    rows = file_descendants_table(meta, registry, path=pool_file)
    missing = [r["name"] for r in rows if metric not in r]
    if missing:
        raise ConfigError(
            f"{pool_file}: {len(missing)} of {len(rows)} descendants have no stored {metric!r} "
            f"(e.g. {missing[0]}); evaluate the pool first (stitchkit build evaluates every descendant)"
        )

    def fits_static(r: dict[str, Any]) -> bool:
        return (max_params is None or r["params"] <= max_params) and (max_macs is None or r["macs"] <= max_macs)

    candidates = sorted((r for r in rows if fits_static(r)), key=lambda r: (-r[metric], r["params"], r["index"]))
    if max_latency_ms is not None:
        measured: list[dict[str, Any]] = []
        for r in candidates:
            model = load_descendant(pool_file, r["index"], registry, device=str(device))
            r = {**r, "latency_ms": measure_latency(model, batch_size=batch_size, device=device)}
            if r["latency_ms"] <= max_latency_ms:
                return {**r, "device": str(device), "batch_size": batch_size}
            measured.append(r)
        if measured:
            fastest = min(measured, key=lambda r: r["latency_ms"])
            raise BudgetError(
                f"no descendant runs within {max_latency_ms} ms at batch size {batch_size} on {device}; "
                f"the fastest that meets the other budgets is #{fastest['index']} {fastest['name']} at "
                f"{fastest['latency_ms']:.2f} ms"
            )
    elif candidates:
        return candidates[0]
    budget = []
    if max_params is not None:
        budget.append(f"max params {max_params:,}")
    if max_macs is not None:
        budget.append(f"max MACs {max_macs:,}")
    key = "params" if max_params is not None else "macs"
    smallest = min(rows, key=lambda r: (r[key], r["index"]))
    raise BudgetError(
        f"no descendant fits {' and '.join(budget)}; the smallest option is #{smallest['index']} "
        f"{smallest['name']} with {smallest['params']:,} params and {smallest['macs']:,} MACs"
    )
