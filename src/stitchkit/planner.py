"""Size planning without weights: every descendant's params and MACs, and the storage.

Rows are built on the meta device (no memory for weights, nothing
downloaded), the method lays out stitch layers and paths, and the usual
counters run on shapes only. Full-scale DeiT-Base designs plan in about a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


from .errors import ConfigError
from .interfaces import AncestryAdapter
from .measure import count_params
from .pool import Pool
from .registry import Registry, default_registry
from .metainit import meta_skeleton
from .spec import RowShape


def plan(
    method: str,
    *,
    ancestry: str | None = None,
    rows: Sequence[RowShape] | None = None,
    anchors: Sequence[str] | None = None,
    adapter: str = "timm-vit",
    model_kwargs: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Plan a pool.

    Either ``ancestry`` (a model name) with ``rows`` (the auxiliary shapes,
    built in the ancestry's family), or ``anchors`` (model names, stitched as
    they are). Returns a JSON-ready dict with ``storage_params`` and
    ``descendants`` (each with ``params``, ``params_published``, ``macs`` and the path).
    """
    registry = registry or default_registry()
    meth = registry.method(method)
    adapter_cls: type[AncestryAdapter] = registry.ancestry(adapter)
    kwargs = dict(model_kwargs or {})
    if (anchors is None) == (ancestry is None):
        raise ConfigError("give either an ancestry with rows, or anchors")
    with meta_skeleton():
        if anchors is not None:
            if rows:
                raise ConfigError("rows are implied by the anchors; do not pass both")
            row_adapters = [adapter_cls.from_name(a, **kwargs) for a in anchors]
            source: dict[str, Any] = {"anchors": list(anchors)}
        else:
            if not rows:
                raise ConfigError("an ancestry needs --rows, e.g. 6x192:3,6x768:12")
            anc = adapter_cls.from_name(ancestry, **kwargs)  # type: ignore[arg-type]
            row_adapters = [adapter_cls.from_arch(anc.resized(s)) for s in sorted(rows, key=lambda s: s.width)]
            source = {
                "ancestry": ancestry,
                "ancestry_shape": str(anc.shape),
                "ancestry_params": count_params(anc.model),
            }
        row_adapters = sorted(row_adapters, key=lambda a: a.shape.width)
        pool = Pool.from_method(meth, row_adapters)
        costs = pool.costs()
        published = pool.costs(convention="published")
    descendants = []
    for c, p in zip(costs, published):
        descendants.append({**c, "params_published": p["params"]})
    stitch_params = sum(count_params(m) for m in pool.stitches.values())
    return {
        "method": method,
        **source,
        "rows": [
            {"shape": str(a.shape), "depth": a.shape.depth, "width": a.shape.width, "heads": a.shape.heads, "params": count_params(a.model)}
            for a in row_adapters
        ],
        "stitch_layers": len(pool.stitches),
        "stitch_params": stitch_params,
        "storage_params": pool.storage_params(),
        "descendants": descendants,
    }


def format_plan(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`plan` result."""
    lines = []
    src = result.get("ancestry") or ", ".join(result.get("anchors", []))
    lines.append(f"method {result['method']}  source {src}")
    lines.append(
        "rows: " + ", ".join(f"{r['shape']} ({r['params'] / 1e6:.2f}M)" for r in result["rows"])
    )
    lines.append(
        f"storage: {result['storage_params']:,} params ({result['storage_params'] / 1e6:.2f}M) = rows + "
        f"{result['stitch_layers']} stitch layers ({result['stitch_params']:,})"
    )
    lines.append("")
    header = f"{'#':>3}  {'descendant':<44} {'blocks':>6} {'params (M)':>11} {'published (M)':>13} {'MACs (G)':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for d in result["descendants"]:
        name = d["label"] + " " + d["name"] if d.get("label") else d["name"]
        lines.append(
            f"{d['index']:>3}  {name[:44]:<44} {d['blocks']:>6} {d['params'] / 1e6:>11.2f} "
            f"{d['params_published'] / 1e6:>13.2f} {d['macs'] / 1e9:>9.3f}"
        )
    lines.append("")
    lines.append(f"{len(result['descendants'])} descendants")
    return "\n".join(lines)
