"""What an SN-Net build trains, phase by phase, for ``stitchkit cost``.

The phases of :mod:`.build`: anchors trained here (``train = true``) or loaded
and priced as pretraining, the least-squares feature pass, the fine-tuning of
uniformly sampled configurations with a frozen teacher, and the evaluation.
Trained alone, each configuration gets the anchors' own recipe: the
``[snnet.anchor_training]`` one when anchors are trained here, else the
pretraining recipe the loaded anchors are priced at.
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
    timm_teacher_macs,
)
from stitchkit.engine import ModelConfig, TrainConfig, section
from stitchkit.engine.config import from_mapping
from stitchkit.engine.settings import resolve
from stitchkit.pool.pool import Pool

from .config import SNNetConfig
from .configurations import check_anchors


def snnet_training_phases(
    config: Mapping[str, Any], *, spec: Any, registry: Any, eval_images: int, pretrain_epochs: int,
    name: str = "snnet", config_cls: type[SNNetConfig] = SNNetConfig,
) -> TrainingPlan:
    """The phases of :func:`.build.build_snnet`; ``name`` and ``config_cls`` as there (SN-Netv2 shares it)."""
    config = resolve(config)
    cfg = section(config, name, config_cls)
    base = TrainConfig.from_config(config)
    anchor_train = cfg.train_config(base, "anchor_training")
    phases: list[Phase] = []
    notes: list[str] = []

    # 1. anchors: trained here, or loaded (priced as pretraining)
    anchors = []
    for i, anchor in enumerate(cfg.anchor_configs()):
        net = meta_network(spec, from_mapping(ModelConfig, anchor.model_section(), f"{name}.anchors[{i}]"))
        anchors.append(net)
        label = anchor.timm_name or str(net.shape)
        if anchor.checkpoint and not anchor.pretrained:  # a model file from `stitchkit train`: at its recorded budget
            phases.append(loaded_phase(f"anchor{i} (loaded)", anchor.checkpoint, net, pretrain_epochs, base.batch_size))
        elif anchor.pretrained:
            phases.append(Phase(f"anchor{i} (loaded)", f"{label} timm weights",
                                pretrain_epochs, base.batch_size, trained_macs=network_macs(net), kind="pretraining"))
        if anchor.train:
            phases.append(Phase(f"anchor{i}", f"{label} trained here", anchor_train.epochs, anchor_train.batch_size,
                                anchor_train.max_steps, trained_macs=network_macs(net)))
    check_anchors([a.shape for a in anchors])
    anchor_macs = [network_macs(a) for a in anchors]

    # 2. the teacher of fine-tuning
    if cfg.distillation == "none":
        teacher_macs = 0
    elif cfg.teacher == "largest-anchor":
        teacher_macs = anchor_macs[-1]
    elif cfg.teacher.startswith("timm:"):
        teacher_macs = timm_teacher_macs(cfg.teacher[len("timm:"):], spec, registry)
    else:
        teacher_macs = network_macs(meta_network_file(cfg.teacher, registry))

    with torch.device("meta"):
        pool = Pool.from_method(cfg.method(), anchors)
    macs = path_macs(pool)

    # 3. stitch initialisation (LS runs the anchors of each stitched pair over a batch)
    init = registry.create("initializer", cfg.initializer)
    if getattr(init, "needs_images", False):
        phases.append(Phase("stitch-init", f"{cfg.initializer}: features of {cfg.init_images} images",
                            images=cfg.init_images, frozen_macs=feature_passes_macs(pool, anchor_macs)))
    if cfg.evaluate_after_init:
        phases.append(Phase("evaluate-after-init", f"{len(macs)} configurations", images=eval_images,
                            frozen_macs=sum(macs), kind="evaluation"))

    # 4. fine-tuning: one sampled configuration per step
    finetune = cfg.train_config(base, "finetune")
    keep = [i for i, p in enumerate(pool.paths) if cfg.trainable == "all" or not p.is_single_row]
    sampler = registry.create("sampler", cfg.sampler, [pool.paths[i] for i in keep], [macs[i] for i in keep])
    step_macs, exact = expected_step_macs(sampler, [macs[i] for i in keep])
    if not exact:
        notes.append(f"fine-tuning MACs per image are the mean of 4096 draws of the {cfg.sampler!r} sampler")
    if cfg.trainable == "stitches":
        notes.append("trainable = stitches: anchors get no weight gradients, so 3 forwards per image is an upper bound")
    phases.append(Phase("finetune", f"{len(keep)} configurations, {cfg.sampler} sampler, teacher {cfg.teacher if teacher_macs else 'none'}",
                        finetune.epochs, finetune.batch_size, finetune.max_steps,
                        trained_macs=step_macs, frozen_macs=teacher_macs))

    # 5. every configuration evaluated
    phases.append(Phase("evaluate", f"{len(macs)} configurations", images=eval_images, frozen_macs=sum(macs), kind="evaluation"))

    trained_here = any(a.train for a in cfg.anchor_configs())
    if trained_here:
        recipe = dict(epochs=anchor_train.epochs, batch_size=anchor_train.batch_size, max_steps=anchor_train.max_steps)
        notes.append(f"alone: each configuration trained from scratch with the anchors' recipe ([{name}.anchor_training])")
    else:
        recipe = dict(epochs=pretrain_epochs, batch_size=base.batch_size, max_steps=0)
        notes.append(f"alone: each configuration trained from scratch for {pretrain_epochs} epochs, the price of a loaded anchor")
    alone = [Phase(f"alone {p.label or p.name}", "trained from scratch", trained_macs=m, **recipe)  # type: ignore[arg-type]
             for p, m in zip(pool.paths, macs)]
    return TrainingPlan(phases=phases, alone=alone, shared=[], notes=notes)
