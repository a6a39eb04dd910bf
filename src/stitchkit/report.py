"""What ``stitchkit info`` shows: a pool file's rows, stitch layers and descendants.

Params and MACs are recomputed from the file's metadata on the meta device
(no tensor is read), so they are shown even for a pool that was never
evaluated; accuracies come from the evaluation stored in the file.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import torch

from .pool import Pool
from .registry import Registry, default_registry
from .spec import Path, RowShape, StitchSpec


def pool_from_metadata(meta: dict[str, Any], registry: Registry | None = None) -> Pool:
    """The pool a file describes, on the meta device (structure only, no weights)."""
    registry = registry or default_registry()
    desc = meta["pool"]
    with torch.device("meta"):
        rows = [registry.ancestry(r["adapter"]).from_arch(r["arch"]) for r in desc["rows"]]
        pool = Pool(
            rows,
            [StitchSpec.from_json(s) for s in desc["stitches"]],
            [Path.from_json(p) for p in desc["paths"]],
            method=desc["method"],
            info=desc.get("info", {}),
        )
    pool.evaluation = dict(desc.get("evaluation", {}))
    return pool


def descendants_table(pool: Pool) -> list[dict[str, Any]]:
    """One row per descendant: index, name, label, blocks, params, MACs and stored results."""
    out = []
    for cost in pool.costs():
        stored = pool.evaluation.get(cost["name"], {})
        row = {k: cost[k] for k in ("index", "name", "label", "blocks", "params", "macs")}
        for key in ("top1", "top5"):
            if key in stored:
                row[key] = stored[key]
        out.append(row)
    return out


def pool_info(path: str | os.PathLike, registry: Registry | None = None) -> dict[str, Any]:
    """JSON-ready summary of a pool file (raises PoolFormatError for an invalid file)."""
    from .storage import read_pool_structure

    meta, pool = read_pool_structure(path, registry)
    desc = meta["pool"]
    return {
        "file": str(path),
        "bytes": pathlib.Path(path).stat().st_size,
        "format_version": meta["format_version"],
        "method": desc["method"],
        "rows": [
            {"shape": str(RowShape(r["depth"], r["width"], r["heads"])), "adapter": r["adapter"],
             "params": sum(p.numel() for p in pool.rows[i].parameters())}
            for i, r in enumerate(desc["rows"])
        ],
        "stitch_layers": len(pool.stitches),
        "storage_params": pool.storage_params(),
        "extras": desc.get("extras", []),
        "info": desc.get("info", {}),
        "descendants": descendants_table(pool),
    }


def _fmt_acc(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def format_pool_info(info: dict[str, Any]) -> str:
    lines = [
        f"pool {info['file']}  ({info['bytes'] / 2**20:.1f} MiB, format v{info['format_version']})",
        f"method: {info['method']}",
        "rows: " + ", ".join(f"{r['shape']} ({r['params'] / 1e6:.3f}M)" for r in info["rows"]),
        f"stitch layers: {info['stitch_layers']}   storage: {info['storage_params']:,} params",
    ]
    anc = info["info"].get("ancestry")
    if anc:
        lines.append(f"ancestry: {anc if isinstance(anc, str) else anc.get('name', anc)}")
    for kind, comp in (info["info"].get("components") or {}).items():
        opts = ", ".join(f"{k}={v!r}" for k, v in (comp.get("options") or {}).items())
        lines.append(f"{kind}: {comp.get('name')}" + (f" ({opts})" if opts else ""))
    lines.append("")
    header = f"{'#':>3}  {'descendant':<40} {'blocks':>6} {'params':>12} {'MACs':>14} {'top1':>7} {'top5':>7}"
    lines += [header, "-" * len(header)]
    for d in info["descendants"]:
        name = (d["label"] + " " + d["name"]) if d.get("label") else d["name"]
        lines.append(
            f"{d['index']:>3}  {name[:40]:<40} {d['blocks']:>6} {d['params']:>12,} {d['macs']:>14,} "
            f"{_fmt_acc(d, 'top1'):>7} {_fmt_acc(d, 'top5'):>7}"
        )
    return "\n".join(lines)
