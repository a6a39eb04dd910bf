"""Training one network on its own: an ancestry, an SN-Net anchor or a teacher (``stitchkit train``).

It is a single :func:`~stitchkit.engine.trainer.fit` phase with a
:class:`~stitchkit.engine.tasks.ClassificationTask`, then an evaluation on the
test split; the model file it writes (:func:`~stitchkit.engine.model.save_model`)
records the data, classes, preprocessing and accuracy.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from ..core.errors import StitchkitError
from .config import save_resolved
from .data import DataConfig, build_data
from .distributed import barrier, dist_context
from .evaluate import evaluate
from .model import ModelConfig, build_model, save_model
from .settings import resolve
from .tasks import ClassificationTask
from .trainer import TrainConfig, fit


def train_model(
    config: Mapping[str, Any], out_dir: str | os.PathLike[str] = "runs/ancestry", *, name: str = "ancestry", save_config: bool = True
) -> pathlib.Path:
    """Train the ``[model]`` network on the ``[data]`` with the ``[train]`` settings; return ``out_dir/<name>.safetensors``.

    Resumes (or skips) like any phase; safe to run under torchrun. ``save_config=False``
    when it is one phase of a larger build, whose ``resolved.json`` holds the whole config.
    """
    resolved = resolve(config)
    out = pathlib.Path(out_dir)
    data = build_data(DataConfig.from_config(resolved))
    train = TrainConfig.from_config(resolved)
    adapter = build_model(data.spec, ModelConfig.from_config(resolved), seed=train.seed)
    relevant = {k: resolved[k] for k in ("data", "model", "train")}
    result = fit(ClassificationTask(adapter.model), data, train, out_dir=out, phase=name, config=relevant)
    ctx = dist_context(train.device)
    test = evaluate(adapter.model, data.test_loader(rank=ctx.rank, world_size=ctx.world_size), device=ctx.device) if len(data.test) else {}  # type: ignore[arg-type]
    path = out / f"{name}.safetensors"
    if ctx.is_main:
        if save_config:
            save_resolved(resolved, out)
        info = {
            "data": {"in_chans": data.spec.in_chans, "img_size": data.spec.img_size, "num_classes": data.spec.num_classes, "source": data.config.source,
                     "splits": data.splits},
            "classes": data.classes,
            "preprocessing": data.preprocessing,
            "evaluation": {"test": test, "last": result.last_metrics},
            "steps": result.steps,
            "train_s": result.seconds,
            "epochs": round(result.steps / max(1, data.steps_per_epoch(train.batch_size, ctx.world_size)), 3),
            "train_images": len(data.train),  # type: ignore[arg-type]
            "config": relevant,
        }
        if adapter.weights_record is not None:
            info["weights"] = adapter.weights_record
        save_model(adapter, path, info)
    barrier()
    if not path.is_file():  # pragma: no cover - a shared output directory is required under torchrun
        raise StitchkitError(f"{path}: rank {ctx.rank} cannot see the model file rank 0 wrote; use a shared output directory")
    return path


def trained_summary(path: str | os.PathLike[str]) -> str:
    """What ``stitchkit train`` ends with: the test accuracy it measured, the budget, and where things are."""
    from .model import model_info

    info = model_info(path)
    test = info.get("evaluation", {}).get("test") or {}
    lines = []
    if test:
        top5 = f" (top-5 {test['top5']:.2f} %)" if "top5" in test else ""  # fewer than 5 classes: no top-5
        lines.append(f"test top-1 {test['top1']:.2f} %{top5} on {test.get('images', '?'):,} "
                     f"test images ({info.get('data', {}).get('source', '?')})")
    budget = f"{info['steps']:,} steps" if "steps" in info else ""
    if "epochs" in info:
        budget += f" ({info['epochs']:g} epochs of {info['train_images']:,} training images)"
    if budget:
        lines.append(f"trained {budget} in {info.get('train_s', 0.0):.0f} s")
    out = pathlib.Path(path).parent
    lines.append(f"model written to {path} (stitchkit info {path}); run record: {out / 'runs.jsonl'}, "
                 f"metrics: {out / (pathlib.Path(path).stem)}/metrics.jsonl")
    return "\n".join(lines)
