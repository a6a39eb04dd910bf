"""Training throughput of the engine on CPU: students sharing one teacher forward, and the engine's step vs a plain loop.

(a) Distilling two Learngene rows from one frozen ancestry together (``fit_together``: one
    ancestry forward per batch) vs one after the other (``fit`` per row), on the demo's shapes
    (12x64:4 ancestry, rows 6x16:1 and 6x64:4, 16 px digits-sized images) and on a
    DeiT-S-shaped ancestry (12x384:6, rows 6x96:2 and 6x384:6, 64 px, patch 16). Reported: images/s
    of distilling both rows, the measured ratio, and the ratio expected from the MACs
    (``(2 T + 3 R) / (T + 3 R)``: T the ancestry's forward, R the rows' forwards and their
    distillation matrices, a trained network counted as 3 forwards).
(b) One training step of the engine (``fit`` with a ``ClassificationTask``) vs a plain
    hand-written timm loop over the same loader, model, AdamW, clipping and label smoothing.

Step times are medians over the steps after ``--warmup``; the two sides of each comparison run
alternately in this one process, ``--repeats`` times each, so machine load hits both alike.

    python benchmarks/shared_teacher.py [--steps 20] [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "plugins")]

from stitchkit.core.registry import Registry  # noqa: E402
from stitchkit.core.spec import parse_row  # noqa: E402
from stitchkit.engine import Callback, ClassificationTask, DataConfig, Student, TrainConfig, build_data, fit, fit_together  # noqa: E402
from stitchkit.engine.trainer import learning_rate, param_groups  # noqa: E402
from stitchkit.families.vit import TimmViT  # noqa: E402
from stitchkit.pool.measure import count_macs  # noqa: E402
from stitchkit_learngene.distill import AuxiliaryDistillationTask  # noqa: E402

SETUPS = {
    "demo": {"ancestry": "12x64:4", "rows": ("6x16:1", "6x64:4"), "img": 16, "patch": 4, "batch": 64},
    "deit-s": {"ancestry": "12x384:6", "rows": ("6x96:2", "6x384:6"), "img": 64, "patch": 16, "batch": 32},
}


class StepTimes(Callback):
    """Wall time of every step (from one step's end to the next)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = time.perf_counter()

    def step_end(self, state: Any) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def vit(shape: str, img: int, patch: int, classes: int, seed: int) -> TimmViT:
    row = parse_row(shape)
    torch.manual_seed(seed)
    return TimmViT.from_arch({"img_size": img, "patch_size": patch, "in_chans": 1, "num_classes": classes,
                              "embed_dim": row.width, "depth": row.depth, "num_heads": row.heads})


def data_for(setup: dict[str, Any]) -> Any:
    return build_data(DataConfig(source="synthetic", img_size=setup["img"], synthetic_samples=2000, synthetic_classes=10,
                                 val_fraction=0.0, test_fraction=0.0))


def train_config(setup: dict[str, Any], steps: int) -> TrainConfig:
    return TrainConfig(epochs=100, max_steps=steps, batch_size=setup["batch"], lr=5e-4, device="cpu", progress=False,
                       eval_every=0, log_every=10, label_smoothing=0.1)


def distillation_tasks(setup: dict[str, Any], ancestry: TimmViT, registry: Registry) -> list[AuxiliaryDistillationTask]:
    tasks = []
    for r, shape in enumerate(setup["rows"]):
        row = vit(shape, setup["img"], setup["patch"], 10, seed=10 + r)
        loss = registry.build("loss", "learngene", ancestry.shape, row.shape, options={})
        tasks.append(AuxiliaryDistillationTask(row, ancestry, loss, alpha=0.5))
    return tasks


def median_after(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


def shared_teacher(name: str, steps: int, warmup: int, repeats: int, registry: Registry) -> dict[str, Any]:
    setup = SETUPS[name]
    data = data_for(setup)
    ancestry = vit(setup["ancestry"], setup["img"], setup["patch"], 10, seed=0)
    train = train_config(setup, steps)
    apart_s, together_s = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            per_row = []
            for r, task in enumerate(distillation_tasks(setup, ancestry, registry)):
                timer = StepTimes()
                fit(task, data, train, out_dir=tmp, phase=f"row{r}", config=None, callbacks=[timer])
                per_row.append(median_after(timer.times, warmup))
            apart_s.append(sum(per_row))
        with tempfile.TemporaryDirectory() as tmp:
            timer = StepTimes()
            tasks = distillation_tasks(setup, ancestry, registry)
            fit_together([Student(t, train, f"row{r}", callbacks=[timer] if r == len(tasks) - 1 else [])
                          for r, t in enumerate(tasks)], data, out_dir=tmp)
            together_s.append(median_after(timer.times, warmup))
    t_macs = count_macs(ancestry)
    r_macs = 0.0
    tokens = (setup["img"] // setup["patch"]) ** 2 + 1
    for task in distillation_tasks(setup, ancestry, registry):
        r_macs += count_macs(task.student) + tokens * sum(p.numel() for p in task.distill.parameters() if p.ndim == 2)
    batch = setup["batch"]
    apart, together = statistics.median(apart_s), statistics.median(together_s)
    return {
        "setup": name, **setup, "steps": steps, "repeats": repeats,
        "apart_step_s": apart, "together_step_s": together,
        "apart_images_per_s": batch / apart, "together_images_per_s": batch / together,
        "ratio": apart / together, "expected_ratio": (2 * t_macs + 3 * r_macs) / (t_macs + 3 * r_macs),
        "ancestry_macs": t_macs, "rows_macs": r_macs,
    }


def plain_loop(model: torch.nn.Module, data: Any, train: TrainConfig, steps: int) -> list[float]:
    """The hand-written loop: the same loader, AdamW groups, cosine lr, label smoothing and clipping."""
    optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas))  # type: ignore[arg-type]
    model.train()
    times, last, step = [], time.perf_counter(), 0
    loader = data.train_loader(train.batch_size, epoch=0, seed=train.seed)
    for images, targets in loader:
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(step, steps, 0, train.lr, train.min_lr)
        loss = F.cross_entropy(model(images).float(), targets, label_smoothing=train.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], train.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        now = time.perf_counter()
        times.append(now - last)
        last = now
        if step >= steps:
            break
    return times


def engine_vs_plain(name: str, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    setup = SETUPS[name]
    data = data_for(setup)
    train = train_config(setup, steps)
    engine_s, plain_s = [], []
    for _ in range(repeats):
        model = vit(setup["ancestry"], setup["img"], setup["patch"], 10, seed=0).model
        plain_s.append(median_after(plain_loop(model, data, train, steps), warmup))
        model = vit(setup["ancestry"], setup["img"], setup["patch"], 10, seed=0).model
        timer = StepTimes()
        with tempfile.TemporaryDirectory() as tmp:
            fit(ClassificationTask(model), data, train, out_dir=tmp, phase="p", callbacks=[timer])
        engine_s.append(median_after(timer.times, warmup))
    engine, plain = statistics.median(engine_s), statistics.median(plain_s)
    return {"setup": name, "model": setup["ancestry"], "img": setup["img"], "batch": setup["batch"], "steps": steps,
            "engine_step_s": engine, "plain_step_s": plain, "ratio": engine / plain, "engine_runs": engine_s, "plain_runs": plain_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--json", type=pathlib.Path)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    registry = Registry()
    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, load average before: {os.getloadavg()[0]:.2f}", flush=True)
    out: dict[str, Any] = {"shared_teacher": [], "engine_vs_plain": []}
    print("| setup | batch | apart: images/s | together: images/s | ratio | expected from MACs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.setups:
        r = shared_teacher(name, args.steps, args.warmup, args.repeats, registry)
        out["shared_teacher"].append(r)
        print(f"| {name} | {r['batch']} | {r['apart_images_per_s']:.0f} | {r['together_images_per_s']:.0f} | "
              f"{r['ratio']:.3f} | {r['expected_ratio']:.3f} |", flush=True)
    print("\n| setup | engine step (s) | plain loop step (s) | engine / plain |")
    print("|---|---:|---:|---:|")
    for name in args.setups:
        r = engine_vs_plain(name, args.steps, args.warmup, args.repeats)
        out["engine_vs_plain"].append(r)
        print(f"| {name} | {r['engine_step_s']:.4f} | {r['plain_step_s']:.4f} | {r['ratio']:.3f} |", flush=True)
    out["load_average_after"] = os.getloadavg()[0]
    print(f"load average after: {out['load_average_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
