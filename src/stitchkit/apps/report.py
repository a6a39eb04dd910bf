"""What ``stitchkit info`` shows: a pool file's rows, stitch layers and descendants.

Everything comes from the file's header: :func:`~stitchkit.io.storage.save_pool`
stores the sizes (parameters of every row and descendant, MACs per image) in
the pool description, and accuracies come from the stored evaluation. So
``info`` reads a few kilobytes with the standard library and never imports
torch. Only for a file written without sizes (older stitchkit) are they
recomputed, on the meta device, from the rows' architectures.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.spec import Path, RowShape, StitchSpec
from ..pool.sizes import SIZES_CONVENTION, pool_sizes

if TYPE_CHECKING:
    from ..pool.pool import Pool
    from ..core.registry import Registry

def pool_from_metadata(meta: dict[str, Any], registry: Registry | None = None, *, path: object = "pool file") -> Pool:
    """The pool a file describes, on the meta device (structure only, no weights).

    An arch that cannot be built is the file's fault: a PoolFormatError naming ``path``.
    """
    from ..core.errors import PoolFormatError, StitchkitError
    from ..pool.metainit import meta_skeleton
    from ..pool.pool import Pool
    from ..core.registry import default_registry

    registry = registry or default_registry()
    desc = meta["pool"]
    rows = []
    for i, r in enumerate(desc["rows"]):
        cls = registry.ancestry(r["adapter"])
        try:
            with meta_skeleton():
                rows.append(cls.from_arch(r["arch"]))
        except Exception as exc:  # noqa: BLE001 - any failure to build a file-supplied arch is a file problem
            raise PoolFormatError(path, f"row {i}: adapter {r['adapter']!r} cannot build its arch: {exc}") from exc
    try:
        with meta_skeleton():
            pool = Pool(
                rows,
                [StitchSpec.from_json(s) for s in desc["stitches"]],
                [Path.from_json(p) for p in desc["paths"]],
                method=desc["method"],
                info=desc.get("info", {}),
            )
    except StitchkitError as exc:
        raise PoolFormatError(path, f"metadata describes an invalid pool: {exc}") from None
    pool.evaluation = dict(desc.get("evaluation", {}))
    return pool


def _valid_sizes(sizes: Any, desc: Mapping[str, Any]) -> bool:
    """Stored sizes of the right form: a count per row and params/MACs per path, all integers."""
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    return (
        isinstance(sizes, dict) and isinstance(sizes.get("rows"), list) and len(sizes["rows"]) == len(desc["rows"])
        and all(count(v) for v in sizes["rows"]) and count(sizes.get("storage_params"))
        and isinstance(sizes.get("descendants"), list) and len(sizes["descendants"]) == len(desc["paths"])
        and all(isinstance(d, dict) and count(d.get("params")) and count(d.get("macs")) for d in sizes["descendants"])
    )


def stored_sizes(meta: dict[str, Any], registry: Registry | None = None, *, path: object = "pool file") -> dict[str, Any]:
    """The sizes stored in a pool file's metadata; recomputed (importing torch) only if absent."""
    from ..core.errors import PoolFormatError

    sizes = meta["pool"].get("sizes")
    if sizes is None or (isinstance(sizes, dict) and sizes.get("convention") != SIZES_CONVENTION):
        sizes = pool_sizes(pool_from_metadata(meta, registry, path=path))
    if not _valid_sizes(sizes, meta["pool"]):
        raise PoolFormatError(path, "metadata 'sizes' is not a params count per row and params/MACs per descendant; "
                              "the file is damaged (rewrite it with save_pool)")
    return sizes


def _table(
    paths: Sequence[Path], sizes: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    out = []
    for i, (p, size) in enumerate(zip(paths, sizes, strict=True)):
        row: dict[str, Any] = {"index": i, "name": p.name, "label": p.label, "blocks": p.num_blocks,
                               "params": size["params"], "macs": size["macs"]}
        stored = evaluation.get(p.name, {})
        for key in ("top1", "top5"):
            if key in stored:
                row[key] = stored[key]
        out.append(row)
    return out


def descendants_table(pool: Pool) -> list[dict[str, Any]]:
    """One row per descendant: index, name, label, blocks, params, MACs and stored results."""
    return _table(pool.paths, pool_sizes(pool)["descendants"], pool.evaluation)


def file_descendants_table(meta: dict[str, Any], registry: Registry | None = None, *, path: object = "pool file") -> list[dict[str, Any]]:
    """:func:`descendants_table` of a pool file, from its metadata (stored sizes, no torch if present)."""
    desc = meta["pool"]
    sizes = stored_sizes(meta, registry, path=path)
    return _table([Path.from_json(p) for p in desc["paths"]], sizes["descendants"], desc.get("evaluation", {}))


def pool_info(path: str | os.PathLike, registry: Registry | None = None) -> dict[str, Any]:
    """JSON-ready summary of a pool file (raises PoolFormatError for an invalid file)."""
    from ..io.header import read_pool_metadata

    meta = read_pool_metadata(path)
    desc = meta["pool"]
    sizes = stored_sizes(meta, registry, path=path)
    return {
        "file": str(path),
        "bytes": pathlib.Path(path).stat().st_size,
        "format_version": meta["format_version"],
        "method": desc["method"],
        "rows": [
            {"shape": str(RowShape.from_json(r)), "adapter": r["adapter"], "params": params}
            for r, params in zip(desc["rows"], sizes["rows"], strict=True)
        ],
        "stitch_layers": len(desc["stitches"]),
        "storage_params": sizes["storage_params"],
        "extras": desc.get("extras", []),
        "info": desc.get("info", {}),
        "descendants": _table([Path.from_json(p) for p in desc["paths"]], sizes["descendants"], desc.get("evaluation", {})),
    }


def best_per_size(descendants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The evaluated descendants more accurate than every smaller one (by params, then MACs): the best at each size."""
    best, top = [], float("-inf")
    for d in sorted((d for d in descendants if "top1" in d), key=lambda d: (d["params"], d["macs"])):
        if d["top1"] > top:
            best.append(d)
            top = d["top1"]
    return best


def is_model_file(path: str | os.PathLike) -> bool:
    """True for a single network written by ``stitchkit train`` (not a pool); False for anything else."""
    from ..io.header import MODEL_FORMAT, kind_of_file  # local: like pool_info, read without torch

    return kind_of_file(path) == MODEL_FORMAT


def model_file_info(path: str | os.PathLike) -> dict[str, Any]:
    """JSON-ready summary of a model file written by ``stitchkit train``: shape, provenance, accuracy."""
    from ..engine.model import load_model, model_info

    adapter = load_model(path)
    info = model_info(path)
    return {
        "file": str(path),
        "bytes": pathlib.Path(path).stat().st_size,
        "kind": "model",
        "adapter": adapter.name,
        "shape": str(adapter.shape),
        "params": sum(p.numel() for p in adapter.model.parameters()),
        "info": info,
    }


def format_model_info(info: dict[str, Any]) -> str:
    meta = info["info"]
    data = meta.get("data", {})
    lines = [
        f"model {info['file']}  ({info['bytes'] / 2**20:.1f} MiB, one network: a model file from stitchkit train)",
        f"network: {info['adapter']} {info['shape']}, {info['params']:,} params",
    ]
    if data:
        lines.append(f"data: {data.get('source', '?')}, {data.get('in_chans')}x{data.get('img_size')}x{data.get('img_size')}, "
                     f"{data.get('num_classes')} classes" + (f" ({', '.join(meta['classes'])})" if meta.get("classes") else ""))
        for split, rec in (data.get("splits") or {}).items():
            extra = f", a stratified subset of {rec['subset_of']:,} (seed {rec['seed']})" if "subset_of" in rec else ""
            lines.append(f"  {split}: {rec.get('images', '?'):,} images from {rec.get('from', '?')}{extra}")
    if "steps" in meta:
        budget = f"trained {meta['steps']:,} steps"
        if "epochs" in meta:
            budget += f" = {meta['epochs']:g} epochs of {meta['train_images']:,} images"
        train = (meta.get("config") or {}).get("train") or {}
        if train:
            budget += f" (batch {train.get('batch_size')}, lr {train.get('lr')}, seed {train.get('seed')})"
        lines.append(budget + f" in {meta.get('train_s', 0.0):.0f} s")
    test = (meta.get("evaluation") or {}).get("test") or {}
    if test:
        lines.append(f"test top-1 {test['top1']:.2f} %, top-5 {test['top5']:.2f} % on {test.get('images', '?'):,} images")
    return "\n".join(lines)


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
