"""Getting SN-Net's anchors and teacher: timm weights, local files, or trained here.

Each anchor trained here is its own engine phase (``anchor<i>``), so a
re-run skips anchors already trained; it is also saved as a model file
(``anchors/anchor<i>.safetensors``) that other runs can load as a checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

from stitchkit.core.errors import ConfigError, StitchkitError
from stitchkit.core.interfaces import AncestryAdapter
from stitchkit.pool.lowrank import check_rank
from stitchkit.pool.pool import check_stitchable

from .config import AnchorConfig, SNNetConfig
from .configurations import check_anchors


def _describe(anchor: AnchorConfig) -> str:
    return anchor.timm_name or f"{anchor.depth}x{anchor.embed_dim}:{anchor.num_heads}"


def create_anchor(index: int, anchor: AnchorConfig, spec: Any, seed: int) -> AncestryAdapter:
    """The anchor's network for data of shape ``spec``, with its configured weights loaded."""
    from stitchkit.engine import ModelConfig, build_model
    from stitchkit.engine.config import from_mapping
    from stitchkit.engine.data import derive_seed

    where = f"snnet.anchors[{index}]"
    model_cfg = from_mapping(ModelConfig, anchor.model_section(), where)
    try:
        return build_model(spec, model_cfg, seed=derive_seed("snnet-anchor", seed, index))  # type: ignore[return-value]
    except StitchkitError as exc:
        raise ConfigError(f"{where} ({_describe(anchor)}): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - timm / hub errors (no network, unknown weights)
        hint = "; without network access, download the weights elsewhere and use checkpoint = \"FILE\"" if anchor.pretrained else ""
        raise ConfigError(f"{where}: cannot create {_describe(anchor)}: {type(exc).__name__}: {exc}{hint}") from None


def obtain_anchors(
    cfg: SNNetConfig, config: Mapping[str, Any], data: Any, base: Any, out_dir: pathlib.Path, seconds: list[float] | None = None,
    name: str = "snnet",
) -> list[AncestryAdapter]:
    """Every anchor, in order, trained on ``data`` first where ``train = true`` (each phase's training time appended to ``seconds``);
    the anchors' shapes and the ``[name]`` section's ``stitch_rank`` are checked before any training."""
    from stitchkit.engine import ClassificationTask, dist_context, fit, save_model

    ctx = dist_context(base.device)
    train_cfg = cfg.train_config(base, "anchor_training")
    configs = cfg.anchor_configs()
    anchors = [create_anchor(i, anchor, data.spec, base.seed) for i, anchor in enumerate(configs)]
    check_anchors([a.shape for a in anchors])  # before any training, not after hours of it
    check_rank(cfg.stitch_rank, cfg.method().stitches([a.shape for a in anchors]), f"{name}.stitch_rank")  # (noted pre-flight)
    check_stitchable(cfg.method(), anchors)  # one input, and every boundary a stitch joins can be joined
    for i, (anchor, adapter) in enumerate(zip(configs, anchors)):
        if anchor.train:
            identity = {"data": config.get("data", {}), "anchor": dataclasses.asdict(anchor)}
            result = fit(ClassificationTask(adapter.model), data, train_cfg, out_dir=out_dir, phase=f"anchor{i}", config=identity)
            if seconds is not None:
                seconds.append(result.seconds)
            if ctx.is_main:
                save_model(adapter, out_dir / "anchors" / f"anchor{i}.safetensors", {"snnet_anchor": i, "steps": result.steps,
                                                                                     "batch_size": train_cfg.batch_size, "last": result.last_metrics})
        adapter.model.cpu()
    return anchors


def check_stitch_rank(cfg: SNNetConfig, shapes: list[Any], where: str) -> None:
    """``stitch_rank`` against the stitch layers the anchors get (at most the smaller width; a note at it)."""
    for note in check_rank(cfg.stitch_rank, cfg.method().stitches(shapes), where):
        logging.getLogger("stitchkit").warning(f"stitchkit: note: {note}")


def obtain_teacher(cfg: SNNetConfig, anchors: list[AncestryAdapter], spec: Any, registry: Any) -> Any:
    """The frozen teacher of fine-tuning (``None`` without distillation).

    ``"largest-anchor"``, ``"timm:NAME"`` (any timm classifier, e.g. DeiT's
    ``regnety_160``; timm's weights or ``teacher_checkpoint``) or a model file.
    """
    if cfg.distillation == "none":
        return None
    if cfg.teacher == "largest-anchor":
        # A copy: the engine freezes its teacher, and the anchor itself is fine-tuned.
        return copy.deepcopy(anchors[-1])
    from stitchkit.engine import load_teacher

    try:
        return load_teacher(cfg.teacher, spec, checkpoint=cfg.teacher_checkpoint, registry=registry)
    except ConfigError as exc:
        raise ConfigError(f"snnet.teacher: {exc}") from None
