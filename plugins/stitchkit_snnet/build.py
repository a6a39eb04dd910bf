"""``stitchkit build`` for SN-Net: anchors -> pool -> stitch init -> fine-tune -> evaluate -> pool file.

Every training step goes through the engine (``stitchkit.engine.fit``), so
the build runs under torchrun, resumes per phase, and a re-run of a finished
build only re-evaluates and rewrites the pool file.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import torch

from stitchkit.core.errors import ConfigError, StitchkitError
from stitchkit.core.interfaces import InitContext
from stitchkit.pool.measure import count_macs, count_params
from stitchkit.pool.pool import Pool

from .anchors import obtain_anchors, obtain_teacher
from .config import SNNetConfig


def init_images(data: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` training images in a seeded order (the same on every rank, on every re-run)."""
    from stitchkit.engine.data import EpochSeeded, derive_seed

    train = data.train
    if isinstance(train, EpochSeeded):
        train.set_epoch(0, seed)
    g = torch.Generator().manual_seed(derive_seed("snnet-init-images", seed))
    order = torch.randperm(len(train), generator=g)[:n]
    return torch.stack([train[int(i)][0] for i in order])


def _accuracies(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {name: float(r["top1"]) for name, r in results.items()}


def check_snnet_config(
    config: Mapping[str, Any], registry: Any, name: str = "snnet", config_cls: type[SNNetConfig] = SNNetConfig
) -> None:
    """Everything :func:`build_snnet` checks before its first phase, without training or writing."""
    from stitchkit.engine import TrainConfig, section
    from stitchkit.engine.settings import resolve

    config = resolve(config)
    cfg = section(config, name, config_cls)
    base = TrainConfig.from_config(config)
    for phase in ("anchor_training", "finetune"):
        cfg.train_config(base, phase)
    # an initializer holds only its options: made now, its own value checks (ls's mode, solver, ridge) run before any phase
    registry.build("initializer", cfg.initializer, options=cfg.initializer_args, where=f"{name}.initializer_args")
    registry.check("sampler", cfg.sampler, cfg.sampler_args, where=f"{name}.sampler_args")
    _check_on_paper(cfg, config, name, registry)


def _check_on_paper(cfg: SNNetConfig, config: Mapping[str, Any], name: str, registry: Any) -> None:
    """``stitch_rank`` and the sampler's option values against the pool the anchors make, built on the meta device
    (no weights, no data; the MACs the sampler sees are those the build computes).

    An anchor that cannot be described here is left to :func:`.anchors.obtain_anchors`, which checks the
    rank again on the real anchors before any training.
    """
    from stitchkit.apps.cost import meta_network
    from stitchkit.engine import DataConfig, ModelConfig
    from stitchkit.engine.config import from_mapping
    from stitchkit.engine.data import DataSpec

    from .anchors import check_stitch_rank

    data = DataConfig.from_config(dict(config))
    spec = DataSpec(data.in_chans, data.img_size, 2)  # widths and MACs do not depend on the class count, which needs the data
    try:
        anchors = [meta_network(spec, from_mapping(ModelConfig, a.model_section(), f"{name}.anchors[{i}]"))
                   for i, a in enumerate(cfg.anchor_configs(name))]
    except Exception:  # noqa: BLE001 - e.g. a timm name unknown offline: the real anchors are checked before training
        return
    check_stitch_rank(cfg, [a.shape for a in anchors], f"{name}.stitch_rank")
    try:
        with torch.device("meta"):
            pool = Pool.from_method(cfg.method(), anchors, stitch_rank=cfg.stitch_rank, stitch_alpha=cfg.stitch_alpha)
            paths = [p for p in pool.paths if cfg.trainable == "all" or not p.is_single_row]
            macs = [count_macs(pool.descendant(p)) for p in paths]
    except StitchkitError:
        raise
    except Exception:  # noqa: BLE001 - what the meta device cannot run is checked by the build itself
        return
    registry.build("sampler", cfg.sampler, paths, macs, options=cfg.sampler_args, where=f"{name}.sampler_args")


def build_snnet(
    config: Mapping[str, Any], *, out_dir: pathlib.Path, registry: Any, name: str = "snnet", config_cls: type[SNNetConfig] = SNNetConfig
) -> pathlib.Path:
    """Run the SN-Net pipeline of a resolved config; return the pool file written to ``out_dir``.

    ``name`` and ``config_cls`` give the config section and its class: SN-Netv2
    runs this same pipeline from its ``[snnetv2]`` section.
    """
    from stitchkit.engine import DataConfig, PoolTask, TrainConfig, build_data, dist_context, evaluate_pool, fit, format_table, section
    from stitchkit.engine.config import write_bytes_atomic, write_json_atomic
    from stitchkit.engine.distributed import barrier
    from stitchkit.io.storage import save_pool

    start = time.perf_counter()
    cfg = section(config, name, config_cls)
    # unknown component names and options fail now, before any data is read or anchor trained
    registry.check("initializer", cfg.initializer, cfg.initializer_args, where=f"{name}.initializer_args")
    registry.check("sampler", cfg.sampler, cfg.sampler_args, where=f"{name}.sampler_args")
    out_dir = pathlib.Path(out_dir)
    data = build_data(DataConfig.from_config(dict(config)))
    base = TrainConfig.from_config(config)
    finetune = cfg.train_config(base, "finetune")
    ctx = dist_context(base.device)
    timings: dict[str, float] = {}

    # 1. anchors (and the teacher, copied before anything is fine-tuned)
    t = time.perf_counter()
    anchor_seconds: list[float] = []
    anchors = obtain_anchors(cfg, config, data, base, out_dir, anchor_seconds, name=name)
    teacher = obtain_teacher(cfg, anchors, data.spec, registry)
    timings["anchors_s"] = time.perf_counter() - t

    # 2. the pool: anchors as rows, SN-Net's stitch layers and configurations
    method = cfg.method()
    info: dict[str, Any] = {
        name: {
            "anchors": [
                {"source": a.timm_name or a.shape or f"{a.depth}x{a.embed_dim}:{a.num_heads}",
                 "weights": "pretrained" if a.pretrained else ("checkpoint" if a.checkpoint else "random"),
                 "trained_here": a.train, "shape": str(r.shape), "params": count_params(r.model)}
                for a, r in zip(cfg.anchor_configs(), anchors)
            ],
            "stitching": method.stitching.to_json() if hasattr(method, "stitching") else None,
            "initializer": cfg.initializer, "init_images": cfg.init_images, "sampler": cfg.sampler,
            "sampler_args": cfg.sampler_args, "stitch_rank": cfg.stitch_rank, "stitch_alpha": cfg.stitch_alpha,
            "trainable": cfg.trainable, "distillation": cfg.distillation, "tau": cfg.tau,
            "teacher": cfg.teacher if teacher is not None else "none",
        },
        "components": {
            "ancestry": {"name": anchors[0].name, "options": {}},
            "initializer": {"name": cfg.initializer, "options": dict(cfg.initializer_args)},
            "sampler": {"name": cfg.sampler, "options": dict(cfg.sampler_args)},
        },
    }
    info["data"] = {"preprocessing": data.preprocessing, "classes": data.classes, "splits": data.splits}  # exports carry them
    pool = Pool.from_method(method, anchors, info=info, stitch_rank=cfg.stitch_rank, stitch_alpha=cfg.stitch_alpha)

    # 3. stitch-layer initialisation
    t = time.perf_counter()
    initializer = registry.build("initializer", cfg.initializer, options=cfg.initializer_args, where=f"{name}.initializer_args")
    images = init_images(data, cfg.init_images, base.seed) if initializer.needs_images else None
    initializer.initialize(pool, InitContext(images=images, seed=base.seed))
    timings["init_s"] = time.perf_counter() - t

    def split() -> Any:
        return data.eval_loader(cfg.eval_split, rank=ctx.rank, world_size=ctx.world_size)

    if cfg.evaluate_after_init:
        info[name]["after_init"] = _accuracies(evaluate_pool(pool, split(), device=ctx.device))
        pool.cpu()

    # 4. fine-tuning: one uniformly sampled configuration per step, the same on every rank
    t = time.perf_counter()
    # Anchors alone have nothing to train when only the stitch layers are trainable.
    paths = [p for p in pool.paths if cfg.trainable == "all" or not p.is_single_row]
    macs = [count_macs(pool.descendant(p)) for p in paths]
    sampler = registry.build("sampler", cfg.sampler, paths, macs, options=cfg.sampler_args, where=f"{name}.sampler_args")
    task = PoolTask(pool, sampler, teacher=teacher, distillation=cfg.distillation, tau=cfg.tau)
    frozen = [p for p in pool.rows.parameters() if p.requires_grad] if cfg.trainable == "stitches" else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        result = fit(task, data, finetune, out_dir=out_dir, phase="finetune", config=config)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    timings["finetune_s"] = time.perf_counter() - t
    info[name]["finetune_steps"] = result.steps

    # 5. evaluate every configuration, then write the pool file
    t = time.perf_counter()
    results = evaluate_pool(pool, split(), store=True, device=ctx.device)
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    # The pool file keeps the training time of each phase (the original one when a rerun skips it),
    # so rerunning a finished build leaves the file unchanged; this session's timings go to evaluation.json.
    info[name]["timings"] = {"anchor_training_s": round(sum(anchor_seconds), 3), "finetune_s": round(result.seconds, 3)}
    pool.info.update(info)
    path = out_dir / cfg.pool_file
    if ctx.is_main:
        pool.cpu()
        provenance = {"method": pool.method, "data": dict(config.get("data", {})), "eval_split": cfg.eval_split,
                      "anchor_weights": [a.weights_record for a in anchors]}  # what timm adapted, per anchor
        save_pool(pool, path, provenance=provenance)
        write_json_atomic(out_dir / "evaluation.json", {"split": cfg.eval_split, "results": results, "timings": {k: round(v, 3) for k, v in timings.items()}})
        write_bytes_atomic(out_dir / "evaluation.md", (format_table(results) + "\n").encode())
    barrier()
    return path
