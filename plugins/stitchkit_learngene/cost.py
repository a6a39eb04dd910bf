"""What a Learngene Pool build trains, phase by phase, for ``stitchkit cost``.

The phases of :mod:`.pipeline`: the ancestry (trained here, or loaded and
priced as pretraining), one distillation per auxiliary model (the row and its
transformation matrices trained, the ancestry frozen), the stitch
initializers' feature passes, the fine-tuning of sampled paths (the ancestry
frozen when prediction distillation is on) and the evaluations. Trained
alone, each descendant is distilled from the same ancestry with the auxiliary
models' recipe (``[learngene.distill]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stitchkit.core.plans import Phase, TrainingPlan
from stitchkit.apps.cost import (
    expected_step_macs,
    feature_passes_macs,
    loaded_phase,
    meta_network,
    meta_network_file,
    network_macs,
    path_macs,
)
from stitchkit.engine import ModelConfig, TrainConfig, section
from stitchkit.engine.settings import resolve
from stitchkit.pool.pool import Pool

from .config import LearngeneConfig
from .designs import PoolDesign
from .method import LearngenePoolMethod


def learngene_training_phases(
    config: Mapping[str, Any], *, spec: Any, registry: Any, eval_images: int, pretrain_epochs: int, path_set: str | None = None
) -> TrainingPlan:
    config = resolve(config)
    lg = section(config, "learngene", LearngeneConfig)
    base = TrainConfig.from_config(config)
    phases: list[Phase] = []
    notes: list[str] = []

    # 1. the ancestry
    model_cfg = ModelConfig.from_config(config)
    if lg.ancestry:
        ancestry = meta_network_file(lg.ancestry, registry)
        first = loaded_phase("ancestry (loaded)", lg.ancestry, ancestry, pretrain_epochs, base.batch_size)
    elif model_cfg.pretrained or model_cfg.checkpoint:
        ancestry = meta_network(spec, model_cfg)
        source = model_cfg.timm_name + (" (timm weights)" if model_cfg.pretrained else f" ({model_cfg.checkpoint})")
        first = Phase("ancestry (loaded)", f"{ancestry.shape} {source}", pretrain_epochs, base.batch_size,
                      trained_macs=network_macs(ancestry), kind="pretraining")
    else:
        ancestry = meta_network(spec, model_cfg)
        train = lg.train_config(base, "ancestry")
        first = Phase("ancestry", f"{ancestry.shape} trained here", train.epochs, train.batch_size, train.max_steps,
                      trained_macs=network_macs(ancestry))
    phases.append(first)
    ancestry_macs = network_macs(ancestry)
    with torch.device("meta"):
        tokens = ancestry.stem()(torch.zeros((1, *ancestry.input_size))).shape[1]

    # 2. the auxiliary models, each distilled from the frozen ancestry
    distill = lg.train_config(base, "distill")
    shapes = PoolDesign(lg.rows, init=lg.init).rows(ancestry.shape)
    rows = []
    with torch.device("meta"):
        for r, shape in enumerate(shapes):
            row = type(ancestry).from_arch(ancestry.resized(shape))
            loss = registry.create(
                "loss", "learngene", ancestry.shape, shape,
                levels=None if lg.levels == "auto" else lg.levels, tau=lg.tau, terms=tuple(lg.terms),
            )
            # each d x d' transformation matrix multiplies every teacher token once
            loss_macs = tokens * sum(p.numel() for p in loss.parameters() if p.ndim == 2)
            rows.append(row)
            # distilled together (learngene.together), every row learns from one ancestry forward per batch:
            # priced once, on the first row's phase
            shared = lg.together and r > 0
            phases.append(Phase(f"distill-row{r}", f"row {shape} (+{loss_macs / 1e6:.1f} MMACs of W/M), "
                                + ("ancestry forward shared with distill-row0" if shared else "ancestry frozen"),
                                distill.epochs, distill.batch_size, distill.max_steps,
                                trained_macs=network_macs(row) + loss_macs, frozen_macs=0.0 if shared else ancestry_macs))
        pool = Pool.from_method(LearngenePoolMethod(paths=path_set or lg.paths, skip_rows=lg.skip_rows), rows)
    row_macs = [network_macs(r) for r in rows]
    macs = path_macs(pool)

    # 3. stitch initializers (data-driven ones run the rows over a batch) and their evaluations
    for name in [*lg.compare_initializers, lg.initializer]:
        init = registry.create("initializer", name)
        if getattr(init, "needs_images", False):
            phases.append(Phase(f"stitch-init-{name}", f"{name}: features of {lg.init_images} images",
                                images=lg.init_images, frozen_macs=feature_passes_macs(pool, row_macs)))
    for name in lg.compare_initializers:
        phases.append(Phase(f"evaluate-after-{name}", f"{len(macs)} descendants", images=eval_images,
                            frozen_macs=sum(macs), kind="evaluation"))

    # 4. fine-tuning: one sampled path per step
    finetune = lg.train_config(base, "finetune")
    sampler = registry.create("sampler", lg.sampler, pool.paths, macs)
    step_macs, exact = expected_step_macs(sampler, macs)
    if not exact:
        notes.append(f"fine-tuning MACs per image are the mean of 4096 draws of the {lg.sampler!r} sampler")
    phases.append(Phase(f"finetune-{lg.initializer}", f"{len(macs)} paths, {lg.sampler} sampler"
                        + (", ancestry frozen" if lg.finetune_distillation else ""),
                        finetune.epochs, finetune.batch_size, finetune.max_steps,
                        trained_macs=step_macs, frozen_macs=ancestry_macs if lg.finetune_distillation else 0.0))

    # 5. every descendant evaluated
    phases.append(Phase("evaluate", f"{len(macs)} descendants", images=eval_images, frozen_macs=sum(macs), kind="evaluation"))

    alone = [
        Phase(f"alone {p.label or p.name}", "distilled from the ancestry ([learngene.distill] recipe)",
              distill.epochs, distill.batch_size, distill.max_steps, trained_macs=m, frozen_macs=ancestry_macs)
        for p, m in zip(pool.paths, macs)
    ]
    if lg.together and len(rows) > 1:
        notes.append("the rows are distilled together: the frozen ancestry runs once per batch for all of them "
                     "(learngene.together = false prices one ancestry forward per row)")
    notes.append("alone: each descendant distilled from the same ancestry with the auxiliary models' recipe "
                 "(W/M matrices not counted); the ancestry phase is shared by both routes")
    return TrainingPlan(phases=phases, alone=alone, shared=[first.name], notes=notes)
