"""Top-1 / top-5 accuracy of a model, or of every descendant of a pool.

Counts are summed over ranks, so under torchrun every process gets the
accuracy over the whole split (each image evaluated once, by one rank).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..pool.lowrank import low_rank_params
from ..pool.measure import count_macs, count_params
from ..pool.pool import Pool
from ..core.spec import Path
from .distributed import all_reduce_max, all_reduce_sum


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, device: torch.device | str | None = None, precision: str = "fp32") -> dict[str, float]:
    """``top1`` and (with more than 5 classes) ``top5`` in percent, mean ``loss``, ``images``."""
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, n
    num_classes = 0
    try:
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(images).float()
            num_classes = logits.shape[-1]
            top = logits.topk(min(5, num_classes), dim=-1).indices
            hit = top == targets[:, None]
            stats[0] += hit[:, 0].sum()
            stats[1] += hit.any(-1).sum()
            stats[2] += F.cross_entropy(logits, targets, reduction="sum")
            stats[3] += len(targets)
    finally:
        model.train(was_training)
    classes = all_reduce_max(torch.tensor([num_classes], dtype=torch.float64, device=device))
    all_reduce_sum(stats)
    n = max(float(stats[3]), 1.0)
    out = {"top1": 100.0 * float(stats[0]) / n, "loss": float(stats[2]) / n, "images": int(stats[3])}
    if classes.item() > 5:
        out["top5"] = 100.0 * float(stats[1]) / n
    return out


def evaluate_pool(
    pool: Pool,
    loader: DataLoader,
    *,
    paths: Iterable[Path | int | str] | None = None,
    store: bool = False,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> dict[str, dict[str, Any]]:
    """Accuracy, params and MACs of every descendant (or of ``paths``), keyed by path name.

    ``store=True`` also writes the results into ``pool.evaluation`` (saved with the pool).
    """
    from tqdm.auto import tqdm

    chosen = [pool.path(p) for p in (pool.paths if paths is None else paths)]
    index = {p.name: i for i, p in enumerate(pool.paths)}
    results: dict[str, dict[str, Any]] = {}
    # a bar on a terminal (rank 0 only): evaluating every descendant is the last minutes of a CPU build
    other_rank = torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0
    for path in tqdm(chosen, desc="evaluating descendants", unit="descendant", leave=False, disable=True if other_rank else None):
        d = pool.descendant(path)
        res: dict[str, Any] = {"index": index.get(path.name, -1), "label": path.label, "blocks": path.num_blocks}
        res.update(evaluate(d, loader, device=device, precision=precision))
        res["params"] = count_params(d) - low_rank_params(d)  # as exported: low-rank stitches merge
        res["macs"] = count_macs(d)
        results[path.name] = res
    if store:
        pool.evaluation.update({k: dict(v) for k, v in results.items()})
    return results


def format_table(results: Mapping[str, Mapping[str, Any]], fmt: str = "markdown") -> str:
    """The results of :func:`evaluate_pool` as a markdown or plain-text table, smallest first."""
    if fmt not in ("markdown", "plain"):
        raise ValueError(f"table format must be 'markdown' or 'plain', got {fmt!r}")
    has5 = any("top5" in r for r in results.values())
    head = ["descendant", "params (M)", "MACs (M)", "top-1 (%)"] + (["top-5 (%)"] if has5 else [])
    rows = []
    for name, r in sorted(results.items(), key=lambda kv: (kv[1].get("macs", 0), kv[0])):
        row = [
            f"{r.get('label') or name}",
            f"{r['params'] / 1e6:.3f}" if "params" in r else "-",
            f"{r['macs'] / 1e6:.2f}" if "macs" in r else "-",
            f"{r['top1']:.2f}",
        ]
        if has5:
            row.append(f"{r['top5']:.2f}" if "top5" in r else "-")
        rows.append(row)
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt_row(head), fmt_row(["-" * w for w in widths]), *(fmt_row(r) for r in rows)])
