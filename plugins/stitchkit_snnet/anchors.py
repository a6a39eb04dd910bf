"""Getting SN-Net's anchors and teacher: timm weights, local files, or trained here.

Each anchor trained here is its own engine phase (``anchor<i>``), so a
re-run skips anchors already trained; it is also saved as a model file
(``anchors/anchor<i>.safetensors``) that other runs can load as a checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any

from stitchkit.errors import ConfigError, StitchkitError
from stitchkit.interfaces import AncestryAdapter
from stitchkit.vit import TimmViT

from .config import AnchorConfig, SNNetConfig
from .configurations import check_anchors


def _describe(anchor: AnchorConfig) -> str:
    return anchor.timm_name or f"{anchor.depth}x{anchor.embed_dim}:{anchor.num_heads}"


def create_anchor(index: int, anchor: AnchorConfig, spec: Any, seed: int) -> TimmViT:
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
    cfg: SNNetConfig, config: Mapping[str, Any], data: Any, base: Any, out_dir: pathlib.Path, seconds: list[float] | None = None
) -> list[TimmViT]:
    """Every anchor, in order, trained on ``data`` first where ``train = true`` (each phase's training time appended to ``seconds``)."""
    from stitchkit.engine import ClassificationTask, dist_context, fit, save_model

    ctx = dist_context(base.device)
    train_cfg = cfg.train_config(base, "anchor_training")
    configs = cfg.anchor_configs()
    anchors = [create_anchor(i, anchor, data.spec, base.seed) for i, anchor in enumerate(configs)]
    check_anchors([a.shape for a in anchors])  # before any training, not after hours of it
    for i, (anchor, adapter) in enumerate(zip(configs, anchors)):
        if anchor.train:
            identity = {"data": config.get("data", {}), "anchor": dataclasses.asdict(anchor)}
            result = fit(ClassificationTask(adapter.model), data, train_cfg, out_dir=out_dir, phase=f"anchor{i}", config=identity)
            if seconds is not None:
                seconds.append(result.seconds)
            if ctx.is_main:
                save_model(adapter, out_dir / "anchors" / f"anchor{i}.safetensors", {"snnet_anchor": i, "steps": result.steps, "last": result.last_metrics})
        adapter.model.cpu()
    return anchors


def obtain_teacher(cfg: SNNetConfig, anchors: list[TimmViT], spec: Any, registry: Any) -> AncestryAdapter | None:
    """The frozen teacher of fine-tuning (``None`` without distillation)."""
    if cfg.distillation == "none":
        return None
    if cfg.teacher == "largest-anchor":
        # A copy: the engine freezes its teacher, and the anchor itself is fine-tuned.
        return TimmViT(copy.deepcopy(anchors[-1].model))
    if cfg.teacher.startswith("timm:"):
        from stitchkit.engine import ModelConfig, build_model

        name = cfg.teacher[len("timm:"):]
        try:
            teacher: AncestryAdapter = build_model(spec, ModelConfig(timm_name=name, pretrained=True))
        except StitchkitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"snnet.teacher: cannot create timm:{name} with pretrained weights: {type(exc).__name__}: {exc}") from None
        return teacher  # type: ignore[return-value]
    from stitchkit.engine import load_model

    path = pathlib.Path(cfg.teacher).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"snnet.teacher: {cfg.teacher!r} is neither 'largest-anchor', 'timm:NAME' nor an existing model file"
        )
    teacher = load_model(path, registry)
    if teacher.num_classes != spec.num_classes:
        raise ConfigError(f"snnet.teacher: {path} predicts {teacher.num_classes} classes, the data has {spec.num_classes}")
    return teacher
