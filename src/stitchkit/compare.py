"""Side-by-side comparison of pools: a markdown report and an accuracy plot.

Used by ``stitchkit demo`` and the benchmarks. Everything shown is read back
from the pool files themselves (their stored evaluation and their structure),
so a report can never disagree with the files it describes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from .report import pool_info


def collect(pools: Mapping[str, str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """``{label: pool_info(file)}`` for each labelled pool file."""
    return {label: pool_info(path) for label, path in pools.items()}


def _smallest(info: dict[str, Any]) -> dict[str, Any]:
    return min(info["descendants"], key=lambda d: (d["params"], d["index"]))


def markdown_report(
    infos: Mapping[str, dict[str, Any]],
    *,
    title: str = "stitchkit comparison",
    phases: Sequence[tuple[str, float]] = (),
    notes: Sequence[str] = (),
    plot: str | None = None,
) -> str:
    """A markdown report: storage of each pool, smallest buildable model, one
    table per pool (descendant, params, MACs, accuracy) and phase wall times."""
    lines = [f"# {title}", ""]
    lines += ["| method | pool file | rows | stitch layers | storage (params) | descendants | smallest descendant (params) | best top-1 |",
              "|---|---|---|---|---|---|---|---|"]
    for label, info in infos.items():
        best = max((d.get("top1", float("nan")) for d in info["descendants"]), default=float("nan"))
        lines.append(
            f"| {label} | `{pathlib.Path(info['file']).name}` | {', '.join(r['shape'] for r in info['rows'])} | "
            f"{info['stitch_layers']} | {info['storage_params']:,} | {len(info['descendants'])} | "
            f"{_smallest(info)['params']:,} | {best:.2f} |"
        )
    lines.append("")
    for label, info in infos.items():
        lines += [f"## {label}", "", "| # | descendant | blocks | params | MACs | top-1 (%) | top-5 (%) |", "|---|---|---|---|---|---|---|"]
        for d in sorted(info["descendants"], key=lambda d: (d["params"], d["index"])):
            name = f"{d['label']}: `{d['name']}`" if d.get("label") else f"`{d['name']}`"
            top1 = f"{d['top1']:.2f}" if "top1" in d else "-"
            top5 = f"{d['top5']:.2f}" if "top5" in d else "-"
            lines.append(f"| {d['index']} | {name} | {d['blocks']} | {d['params']:,} | {d['macs']:,} | {top1} | {top5} |")
        lines.append("")
    if phases:
        lines += ["## Wall time", "", "| phase | seconds |", "|---|---|"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in phases]
        lines.append(f"| **total** | **{sum(s for _, s in phases):.1f}** |")
        lines.append("")
    if plot:
        lines += [f"![accuracy against params and MACs]({plot})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def plot_accuracy(infos: Mapping[str, dict[str, Any]], out: str | os.PathLike, *, title: str = "") -> pathlib.Path:
    """PNG with accuracy against params (left) and MACs (right), one curve per pool.

    Each curve is the pool's Pareto front (best accuracy at or below each size);
    every descendant is also drawn as a faint point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, unit in ((axes[0], "params", 1e6), (axes[1], "macs", 1e6)):
        for label, info in infos.items():
            pts = sorted((d[key] / unit, d["top1"]) for d in info["descendants"] if "top1" in d)
            if not pts:
                continue
            (line,) = ax.plot([], [])
            color = line.get_color()
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.35, color=color)
            front, best = [], float("-inf")
            for x, y in pts:
                if y > best:
                    front.append((x, y))
                    best = y
            ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", color=color, label=label)
        ax.set_xlabel("parameters (M)" if key == "params" else "MACs per image (M)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    from .files import atomic_write

    out = pathlib.Path(out)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return out
