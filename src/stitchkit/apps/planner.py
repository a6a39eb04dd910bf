"""Size planning without weights: every descendant's params and MACs, and the storage.

Rows are built on the meta device (no memory for weights, nothing
downloaded), the method lays out stitch layers and paths, and the usual
counters run on shapes only. Full-scale DeiT-Base designs plan in about a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


from ..core import limits
from ..core.errors import ConfigError, LimitError
from ..core.interfaces import AncestryAdapter
from ..pool.measure import count_params
from ..pool.pool import Pool
from ..core.registry import Registry, default_registry
from ..pool.metainit import meta_skeleton
from ..core.spec import RowShape


def plan(
    method: str,
    *,
    ancestry: str | None = None,
    rows: Sequence[RowShape] | None = None,
    anchors: Sequence[str] | None = None,
    adapter: str = "auto",
    model_kwargs: dict[str, Any] | None = None,
    registry: Registry | None = None,
    method_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan a pool.

    Either ``ancestry`` (a model name) with ``rows`` (the auxiliary shapes,
    built in the ancestry's family), or ``anchors`` (model names, stitched as
    they are); ``method_options`` go to the method's constructor (e.g. snnet's
    ``kernel_size``, ``stride``, ``nearest_stitching``). Returns a JSON-ready dict with ``storage_params`` and
    ``descendants`` (each with ``params``, ``params_published``, ``macs`` and the path).
    """
    registry = registry or default_registry()
    try:
        meth = registry.create("method", method, **(method_options or {}))
    except TypeError as exc:
        raise ConfigError(f"method {method!r} does not take the options {sorted(method_options or {})}: {exc}") from None
    kwargs = dict(model_kwargs or {})
    if (anchors is None) == (ancestry is None):
        raise ConfigError("give either an ancestry with rows, or anchors")
    if "img_size" in kwargs:
        limits.check_int(kwargs["img_size"], "image size", maximum=limits.MAX_IMG_SIZE, limit="MAX_IMG_SIZE")
    if "num_classes" in kwargs:
        limits.check_int(kwargs["num_classes"], "number of classes", maximum=limits.MAX_CLASSES, limit="MAX_CLASSES")
    if len(rows or ()) + len(anchors or ()) > limits.MAX_ROWS:
        raise LimitError(f"{len(rows or ()) + len(anchors or ())} rows given; a pool has at most {limits.MAX_ROWS} (stitchkit.core.limits.MAX_ROWS)")
    for s in rows or ():
        limits.check_row(s.depth, s.width, s.heads, f"row {s}")
    with meta_skeleton():
        if anchors is not None:
            if rows:
                raise ConfigError("rows are implied by the anchors; do not pass both")
            row_adapters = [create_by_name(a, adapter, registry, **kwargs) for a in anchors]
            source: dict[str, Any] = {"anchors": list(anchors)}
        else:
            if not rows:
                raise ConfigError("an ancestry needs --rows, e.g. 6x192:3,6x768:12")
            anc = create_by_name(ancestry, adapter, registry, **kwargs)  # type: ignore[arg-type]
            row_adapters = [type(anc).from_arch(anc.resized(s)) for s in sorted(rows, key=lambda s: s.width)]
            source = {
                "ancestry": ancestry,
                "ancestry_shape": str(anc.shape),
                "ancestry_params": count_params(anc.model),
            }
        row_adapters = sorted(row_adapters, key=lambda a: a.shape.width)
        pool = Pool.from_method(meth, row_adapters)
        parts = pool.part_macs()
        costs = pool.costs(parts=parts)
        published = pool.costs(convention="published", parts=parts)
    descendants = []
    for c, p in zip(costs, published):
        descendants.append({**c, "params_published": p["params"]})
    stitch_params = sum(count_params(m) for m in pool.stitches.values())
    return {
        "method": method,
        **source,
        "rows": [
            {"shape": str(a.shape), "adapter": a.name, **a.shape.to_json(), "params": count_params(a.model)}
            for a in row_adapters
        ],
        "stitch_layers": len(pool.stitches),
        "stitch_params": stitch_params,
        "storage_params": pool.storage_params(),
        "descendants": descendants,
    }


def create_by_name(name: str, adapter: str, registry: Registry, **kwargs: Any) -> AncestryAdapter:
    """A network by model name through ``adapter``; ``"auto"``: the adapter the plugins name for the model
    (:meth:`~stitchkit.core.registry.Registry.ancestry_for`)."""
    if adapter == "auto":
        adapter = registry.ancestry_for(name)
    return registry.ancestry(adapter).from_name(name, **kwargs)


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
