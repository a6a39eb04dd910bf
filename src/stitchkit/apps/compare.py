"""Side-by-side comparison of pools: a markdown report and an accuracy plot.

Used by ``stitchkit demo`` and the benchmarks. Everything shown is read back
from the pool files themselves (their stored evaluation and their structure),
so a report can never disagree with the files it describes.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..io.files import atomic_write
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
    intro: str = "",
    total_seconds: float | None = None,
) -> str:
    """A markdown report: ``intro`` (markdown), storage of each pool, smallest buildable model,
    one table per pool (descendant, params, MACs, accuracy) and phase wall times
    (``total_seconds``: the run's wall time when phases overlapped; default their sum)."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro.rstrip("\n"), ""]
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
        total = sum(s for _, s in phases) if total_seconds is None else total_seconds
        lines.append(f"| **total** | **{total:.1f}** |")
        lines.append("")
    if plot:
        lines += [f"![accuracy against params and MACs]({plot})", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def blocks_key(name: str) -> str:
    """A path's blocks without its stitch layers' names: how two methods' descendants are matched.

    Learngene Pool and SN-Net number their stitch layers differently, so the same
    blocks (``r0[0:5]`` then ``r1[5:6]``) carry different path names.
    """
    return "+".join(t for t in name.split("+") if t.startswith("r"))


def compare_by_blocks(infos: Mapping[str, dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """One row per descendant of the ``reference`` pool, smallest first, with every pool's top-1
    on the same blocks (``None`` where a pool has no such descendant or no stored accuracy)."""
    by_blocks = {
        label: {blocks_key(d["name"]): d for d in info["descendants"]} for label, info in infos.items()
    }
    rows = []
    for d in sorted(infos[reference]["descendants"], key=lambda d: (d["params"], d["index"])):
        key = blocks_key(d["name"])
        top1 = {label: by_blocks[label].get(key, {}).get("top1") for label in infos}
        rows.append({"descendant": d["name"], "blocks": key, "params": d["params"], "macs": d["macs"], "top1": top1})
    return rows


@dataclass
class GroupFinding:
    """Which pool is best on one group of descendants (narrow row, stitched ones, wide row)."""

    group: str
    #: How many descendants the group holds, and the mean top-1 of each pool over them.
    size: int
    means: dict[str, float]
    best: str
    #: ``best``'s mean minus the runner-up's, in points (0 on a tie).
    margin: float
    runner_up: str
    #: On how many of the group's descendants ``best`` has the highest top-1 (ties count for every tied pool).
    wins: int


def find_best(rows: Sequence[Mapping[str, Any]]) -> list[GroupFinding]:
    """The finding on top of the demo's report, computed from the three-way table ``rows``
    (:func:`compare_by_blocks`): best pool on the narrowest descendant, on the ones in between
    (by mean top-1) and on the widest, and by how many points."""
    if len(rows) < 2:
        raise ValueError(f"a finding needs at least a narrowest and a widest descendant, got {len(rows)} rows")
    labels = [k for k in rows[0]["top1"] if all(r["top1"].get(k) is not None for r in rows)]
    if len(labels) < 2:
        raise ValueError("a finding compares at least two pools with an accuracy on every descendant")
    groups = [("narrowest", rows[:1]), ("in between", rows[1:-1]), ("widest", rows[-1:])]
    out = []
    for group, members in groups:
        if not members:
            continue
        means = {k: sum(float(r["top1"][k]) for r in members) / len(members) for k in labels}
        ranked = sorted(labels, key=lambda k: -means[k])
        best, runner_up = ranked[0], ranked[1]
        wins = sum(float(r["top1"][best]) >= max(float(r["top1"][k]) for k in labels) for r in members)
        out.append(GroupFinding(group, len(members), means, best, means[best] - means[runner_up], runner_up, wins))
    return out


def format_finding(findings: Sequence[GroupFinding], rows: Sequence[Mapping[str, Any]]) -> str:
    """The finding as one markdown paragraph (the numbers are :func:`find_best`'s, to 1 decimal)."""
    parts = []
    for f in findings:
        others = ", ".join(f"{k} {v:.1f}" for k, v in f.means.items() if k != f.best)
        if f.group == "in between":
            what = f"on the {f.size} stitched descendant{'s' if f.size > 1 else ''} in between (mean top-1)"
            tail = f", best on {f.wins} of {f.size}"
        else:
            row = rows[0] if f.group == "narrowest" else rows[-1]
            what = f"on the {f.group} descendant `{row['blocks']}` ({row['params']:,} params)"
            tail = ""
        tied = [k for k, v in f.means.items() if v == f.means[f.best]]
        if len(tied) > 1:
            others = ", ".join(f"{k} {v:.1f}" for k, v in f.means.items() if k not in tied)
            parts.append(f"{what}: a tie between {' and '.join(tied)} at {f.means[f.best]:.1f}%" + (f" ({others})" if others else ""))
            continue
        parts.append(f"{what}: **{f.best}** {f.means[f.best]:.1f}% (+{f.margin:.1f} points over {f.runner_up}{tail}; {others})")
    return "Best " + "; ".join(parts) + "."


def plot_accuracy(infos: Mapping[str, dict[str, Any]], out: str | os.PathLike, *, title: str = "",
                  references: Sequence[tuple[str, float]] = ()) -> pathlib.Path:
    """PNG with accuracy against params (left) and MACs (right): every descendant a point.

    ``references``: published (label, top-1) results on the same data, drawn as
    grey dashed lines so a reader can place the pools among known models.

    Each pool's line is a staircase: the best accuracy among its descendants at
    or below each size, so it never promises what no descendant delivers. The
    descendants on that frontier are filled markers, the others hollow.
    """
    import matplotlib  # local: a plot is the only user of matplotlib (slow to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, key in ((axes[0], "params"), (axes[1], "macs")):
        right = 1.04 * max(d[key] for info in infos.values() for d in info["descendants"]) / 1e6
        for n, (label, info) in enumerate(infos.items()):
            pts = sorted((d[key] / 1e6, d["top1"]) for d in info["descendants"] if "top1" in d)
            if not pts:
                continue
            (line,) = ax.plot([], [])
            color, marker = line.get_color(), markers[n % len(markers)]
            front, best = [], float("-inf")
            for x, y in pts:
                if y > best:
                    front.append((x, y))
                    best = y
            steps_x = [p[0] for p in front] + [right]
            steps_y = [p[1] for p in front] + [front[-1][1]]
            ax.step(steps_x, steps_y, where="post", color=color, lw=1.4, alpha=0.8)
            rest = [p for p in pts if p not in front]
            ax.scatter([p[0] for p in rest], [p[1] for p in rest], s=26, marker=marker, facecolors="none", edgecolors=color, alpha=0.8)
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=34, marker=marker, color=color,
                       label=f"{label} ({len(front)} of {len(pts)} on its frontier)")
        for label, top1 in references:
            ax.axhline(top1, color="0.5", lw=0.8, ls="--", alpha=0.8)
            ax.text(right, top1, f" {label} {top1:g}", fontsize=6, color="0.35", va="bottom", ha="right")
        ax.set_xlabel("parameters (M)" if key == "params" else "MACs per image (M)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xlim(left=0, right=right)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.text(0.5, -0.01, "every marker is a descendant; filled: best at or below its size (the staircase); hollow: beaten by a smaller one",
             ha="center", va="top", fontsize=8)
    if title:
        fig.suptitle(title)

    out = pathlib.Path(out)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format=out.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return out
