"""What ``train.compile = true`` buys per phase of the demo's recipe on this machine.

    OMP_NUM_THREADS=1 python benchmarks/compile_speed.py [--steps 40] [--phases ancestry distill finetune]

For each phase (training the 12x64 ancestry, distilling the 6x64 row from it,
fine-tuning the Learngene Pool of rows 6x16 and 6x64 one uniformly sampled path
per step with soft distillation) it runs the engine's ``fit`` for ``--steps``
steps eagerly and then compiled, on the digits, and reports the CPU time
(user + sys of this process) of a steady step (median over steps whose graph
was already compiled), the compile overhead (total compiled CPU minus total
eager CPU, plus what the steady steps saved) and the number of steps after
which compiling pays. CPU time, not wall time: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time
from typing import Any

import torch

from stitchkit.engine import DataConfig, PoolTask, TrainConfig, build_data, fit
from stitchkit.engine.data import DataSpec
from stitchkit.engine.model import ModelConfig, build_model
from stitchkit.engine.callbacks import Callback
from stitchkit.engine.tasks import ClassificationTask, TrainTask
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry


def _timed_fit(task_factory: Any, data: Any, steps: int, compile: bool) -> tuple[list[float], list[list[str]]]:
    """CPU seconds of every step, and each step's paths."""
    task: TrainTask = task_factory()
    times: list[float] = []
    paths: list[list[str]] = []
    last = [time.process_time()]

    class Timer(Callback):
        def step_end(self, st: Any) -> None:
            now = time.process_time()
            times.append(now - last[0])
            paths.append(list(st.paths))
            last[0] = now

    train = TrainConfig(epochs=100, max_steps=steps, batch_size=64, lr=1e-3, device="cpu", progress=False,
                        eval_every=0, label_smoothing=0.0, compile=compile)
    with tempfile.TemporaryDirectory() as tmp:
        last[0] = time.process_time()
        fit(task, data, train, out_dir=pathlib.Path(tmp), phase="bench", callbacks=[Timer()])
    return times, paths


def measure(name: str, task_factory: Any, data: Any, steps: int) -> dict[str, Any]:
    eager, _ = _timed_fit(task_factory, data, steps, compile=False)
    compiled, paths = _timed_fit(task_factory, data, steps, compile=True)
    seen: set[tuple[str, ...]] = set()
    steady_c, steady_e = [], []
    for t_c, t_e, p in zip(compiled, eager, paths):
        key = tuple(p)
        if key in seen:
            steady_c.append(t_c)
            steady_e.append(t_e)
        seen.add(key)
    step_e, step_c = statistics.median(steady_e), statistics.median(steady_c)
    overhead = sum(compiled) - sum(eager) + (step_e - step_c) * len(steady_c)
    saved = step_e - step_c
    return {
        "phase": name,
        "steps": steps,
        "graphs": len(seen),
        "eager_step_ms": 1e3 * step_e,
        "compiled_step_ms": 1e3 * step_c,
        "step_speedup": step_e / step_c,
        "compile_overhead_s": overhead,
        "break_even_steps": overhead / saved if saved > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--phases", nargs="+", default=["ancestry", "distill", "finetune"])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    registry = Registry()
    data = build_data(DataConfig(source="digits", img_size=16, in_chans=1))
    spec = DataSpec(1, 16, 10)
    model = ModelConfig(depth=12, embed_dim=64, num_heads=4, patch_size=4)
    ancestry = build_model(spec, model, seed=0)
    for param in ancestry.model.parameters():
        param.requires_grad_(False)
    rows = [build_model(spec, ModelConfig(depth=6, embed_dim=w, num_heads=h, patch_size=4), seed=1) for w, h in ((16, 1), (64, 4))]
    factories = {
        "ancestry": lambda: ClassificationTask(build_model(spec, model, seed=0).model),
        "distill": lambda: _distill_task(registry, ancestry, spec),
        "finetune": lambda: _finetune_task(registry, rows, ancestry),
    }
    results = []
    for name in args.phases:
        res = measure(name, factories[name], data, args.steps)
        results.append(res)
        print(f"{name:9s} graphs {res['graphs']:2d}  eager {res['eager_step_ms']:6.1f} ms/step  compiled "
              f"{res['compiled_step_ms']:6.1f} ms/step  x{res['step_speedup']:.3f}  compile overhead "
              f"{res['compile_overhead_s']:6.1f} s CPU  pays after {res['break_even_steps']:.0f} steps", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "results": results}, indent=2))
    return 0


def _distill_task(registry: Registry, ancestry: Any, spec: DataSpec) -> TrainTask:
    from stitchkit_learngene.distill import AuxiliaryDistillationTask

    student = build_model(spec, ModelConfig(depth=6, embed_dim=64, num_heads=4, patch_size=4), seed=2)
    loss = registry.create("loss", "learngene", ancestry.shape, student.shape)
    return AuxiliaryDistillationTask(student, ancestry, loss)


def _finetune_task(registry: Registry, rows: list[Any], ancestry: Any) -> TrainTask:
    import copy

    pool = Pool.from_method(registry.method("learngene-pool"), [copy.deepcopy(r) for r in rows])
    sampler = registry.create("sampler", "uniform", pool.paths)
    return PoolTask(pool, sampler, teacher=ancestry, distillation="soft")


if __name__ == "__main__":
    raise SystemExit(main())
