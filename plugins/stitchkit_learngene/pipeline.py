"""``learngene-pool``'s whole pipeline, resumable phase by phase.

1. the ancestry: loaded (a model file, or ``[model]`` weights) or trained on the data (phase ``ancestry``);
2. every auxiliary model distilled from the frozen ancestry (phase ``distill-row<r>``), its learned
   ``W`` / ``M`` kept in ``pool.extras``;
3. the pool built from the rows, stitch layers initialised (``tm`` by default), and, on request, every
   descendant evaluated right after each initializer in ``compare_initializers``;
4. the pool fine-tuned one sampled path per step (phase ``finetune-<initializer>``);
5. every descendant evaluated; the pool file written.

Each phase checkpoints through the engine and is skipped when finished, so a
killed build re-run with the same config picks up where it stopped. A phase's
identity holds only the settings it depends on: a second build in the same
directory with another initializer reuses the distilled rows and only
fine-tunes again.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stitchkit.engine import (
    DataConfig,
    Student,
    ModelConfig,
    PoolTask,
    TrainConfig,
    build_data,
    build_model,
    dist_context,
    evaluate,
    evaluate_pool,
    fit_together,
    load_model,
    section,
    train_model,
)
from stitchkit.engine.settings import resolve
from stitchkit.engine.data import Data, derive_seed, seeded
from stitchkit.core.errors import ConfigError
from stitchkit.core.spec import parse_rows
from stitchkit.core.interfaces import AncestryAdapter, DistillationLoss, InitContext
from stitchkit.pool.lowrank import check_rank
from stitchkit.pool.measure import count_macs
from stitchkit.pool.metainit import meta_skeleton
from stitchkit.pool.pool import Pool, check_stitchable
from stitchkit.io.storage import save_pool

from .config import LearngeneConfig
from .distill import AuxiliaryDistillationTask
from .extras import store_matrices
from .losses import REDUCTIONS, AttentionLoss, BlockLoss, LearngeneDistillation
from .method import LearngenePoolMethod


def check_config(method, config: Mapping[str, Any], registry) -> tuple[dict[str, Any], LearngeneConfig, Any, dict[str, Any]]:  # noqa: ANN001
    """The resolved config, its ``[learngene]`` section, the method and the components, all checked; trains nothing."""
    config = resolve(config)
    lg = section(config, "learngene", LearngeneConfig)
    if method.fixed_paths:  # learngene-pool-sliding-window: the method name decides
        lg = dataclasses.replace(lg, paths=method.path_set)
    method = LearngenePoolMethod(paths=lg.paths, skip_rows=lg.skip_rows)
    # unknown component names and options fail now, not after hours of distillation
    parts = components(lg, registry)
    base = TrainConfig.from_config(config)
    for phase in ("ancestry", "distill", "finetune"):
        lg.train_config(base, phase)
    _check_on_paper(lg, method, config, registry, parts)
    return config, lg, method, parts


def _check_on_paper(lg: LearngeneConfig, method: LearngenePoolMethod, config: Mapping[str, Any], registry, parts) -> None:  # noqa: ANN001
    """``stitch_rank`` and the sampler's option values against the pool the design makes, built on the meta device
    from the ancestry's architecture (no weights, no data). What cannot be described here is checked by the build
    itself before the first row is distilled."""
    from stitchkit.apps.cost import meta_network, meta_network_file
    from stitchkit.engine.data import DataSpec

    data = DataConfig.from_config(dict(config))
    spec = DataSpec(data.in_chans, data.img_size, 2)  # widths and MACs do not depend on the class count, which needs the data
    try:
        ancestry = meta_network_file(lg.ancestry, registry) if lg.ancestry else meta_network(spec, ModelConfig.from_config(config))
        design = registry.build("design", lg.design, options=parts["design"]["options"], where="learngene.design_args")
        shapes = design.rows(ancestry.shape)
        with torch.device("meta"):
            rows = [type(ancestry).from_arch(ancestry.resized(s)) for s in shapes]
    except Exception:  # noqa: BLE001 - e.g. a timm name unknown offline, or a design the ancestry refuses: the build says so
        return
    for note in check_rank(lg.stitch_rank, method.stitches(shapes), "learngene.stitch_rank"):
        logging.getLogger("stitchkit").warning(f"stitchkit: note: {note}")
    try:
        with torch.device("meta"):
            pool = Pool.from_method(method, rows, stitch_rank=lg.stitch_rank, stitch_alpha=lg.stitch_alpha)
            macs = [count_macs(pool.descendant(p)) for p in pool.paths]
    except Exception:  # noqa: BLE001 - what the meta device cannot run is checked by the build itself
        return
    registry.build("sampler", lg.sampler, pool.paths, macs, options=lg.sampler_args, where="learngene.sampler_args")


def run_pipeline(method, config: Mapping[str, Any], *, out_dir: pathlib.Path, registry) -> pathlib.Path:  # noqa: ANN001
    """Build a learngene pool from a resolved config; return the pool file."""
    return build_together(method, [config], out_dir=out_dir, registry=registry)[0]


def build_together(method, configs: Sequence[Mapping[str, Any]], *, out_dir: pathlib.Path, registry) -> list[pathlib.Path]:  # noqa: ANN001
    """Several pools from one ancestry and one set of distilled rows, fine-tuned side by side; their pool files.

    ``configs`` may differ only in what fine-tuning depends on (the initializer, its options,
    the sampler, the pool file ...): the rows are distilled once, and with ``learngene.together``
    every pool is fine-tuned in one run that computes the ancestry's forward once per batch for
    all of them (each pool's weights are those of building it alone). Phases are named as in a
    single build (``finetune-<initializer>``), so the initializers must differ.
    """
    checked = [check_config(method, c, registry) for c in configs]
    config, lg, _, parts = checked[0]
    for other, olg, _, _ in checked[1:]:
        for r in range(len(parse_rows(lg.rows))):
            if _phase_config(other, olg, r) != _phase_config(config, lg, r):
                raise ConfigError("learngene: pools built together share the ancestry and the distilled rows; these configs "
                                  "differ in a setting distillation depends on (build them separately)")
    inits = [c[1].initializer for c in checked]
    if len(set(inits)) != len(inits):
        raise ConfigError(f"learngene: pools built together need distinct initializers (their fine-tuning phases), got {inits}")
    base = TrainConfig.from_config(config)
    out_dir = pathlib.Path(out_dir)
    data = build_data(DataConfig.from_config(config))
    ctx = dist_context(base.device)
    ancestry = obtain_ancestry(config, lg, data, base, out_dir, registry)
    rows = distil_rows(config, lg, data, base, ancestry, out_dir, registry)
    loader = data.eval_loader(lg.eval_split, rank=ctx.rank, world_size=ctx.world_size)
    pools, students = [], []
    for i, (cfg, clg, cmethod, cparts) in enumerate(checked):
        info = copy.deepcopy(rows["info"])
        info["components"] = {"ancestry": {"name": ancestry.name, "options": {}}, **cparts}
        adapters = rows["adapters"] if len(checked) == 1 else copy.deepcopy(rows["adapters"])  # each pool owns its rows
        pool = Pool.from_method(cmethod, adapters, info=info, extras=dict(rows["extras"]), stitch_rank=clg.stitch_rank,
                                stitch_alpha=clg.stitch_alpha)
        pool.info["data"] = {"preprocessing": data.preprocessing, "classes": data.classes, "splits": data.splits}  # exports carry them
        after_init = {}
        for name in clg.compare_initializers:
            initialize_stitches(pool, name, clg, data, base, registry, clg.initializer_args if name == clg.initializer else {})
            after_init[name] = _top1(evaluate_pool(pool, loader))
        initialize_stitches(pool, clg.initializer, clg, data, base, registry, clg.initializer_args)
        if after_init:
            pool.info["learngene"]["after_init"] = after_init
        pools.append(pool)
        students.append(finetune_student(pool, cfg, clg, base, ancestry, registry))
    fit_together(students, data, out_dir=out_dir, together=lg.together)
    paths = []
    for (cfg, clg, _, _), pool in zip(checked, pools):
        evaluate_pool(pool, loader, store=True)
        path = out_dir / clg.pool_file
        if ctx.is_main:
            pool.to("cpu")
            provenance = {"config": dict(cfg), "eval_split": clg.eval_split}
            if ancestry.weights_record is not None:  # what timm adapted when loading the ancestry's weights
                provenance["ancestry_weights"] = ancestry.weights_record
            save_pool(pool, path, provenance=provenance)
        paths.append(path)
    from stitchkit.engine.distributed import barrier

    barrier()
    return paths


# --------------------------------------------------------------------------- components
def _with_shorthands(registry, kind: str, name: str, options: Mapping[str, Any], shorthands: Mapping[str, Any]) -> dict[str, Any]:  # noqa: ANN001
    """``options`` plus those section-level ``shorthands`` the component takes and ``options`` does not set."""
    accepted = {o.name for o in registry.entry(kind, name).options}
    return {**{k: v for k, v in shorthands.items() if k in accepted}, **options}


def components(lg: LearngeneConfig, registry) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """Name and effective options of the design, loss, initializer and sampler, each checked against the
    registry (unknown name or option: a ConfigError before any training). Recorded in the pool's info."""
    levels = None if lg.levels == "auto" else lg.levels
    chosen = {
        "design": (lg.design, _with_shorthands(registry, "design", lg.design, lg.design_args, {"rows": lg.rows, "init": lg.init})),
        "loss": (lg.loss, _with_shorthands(registry, "loss", lg.loss, lg.loss_args,
                                           {"levels": levels, "tau": lg.tau, "terms": list(lg.terms),
                                            "reduction": lg.prediction_reduction})),
        "initializer": (lg.initializer, dict(lg.initializer_args)),
        "sampler": (lg.sampler, dict(lg.sampler_args)),
    }
    if "layout" in lg.loss_args:  # distil_rows passes the ancestry adapter's feature_layout: a value here would be ignored
        raise ConfigError(
            f"learngene.loss_args.layout = {lg.loss_args['layout']!r}: the layout is the ancestry adapter's feature layout "
            "(tokens, nhwc or map) and is set from it; remove the key"
        )
    if lg.loss_args.get("reduction", lg.prediction_reduction) not in REDUCTIONS and lg.loss in ("learngene", "prediction"):
        raise ConfigError(f"learngene.loss_args.reduction must be one of {', '.join(REDUCTIONS)}, got {lg.loss_args['reduction']!r}")
    for kind, (name, options) in chosen.items():
        registry.check(kind, name, options, where=f"learngene.{kind}_args")
    for name in lg.compare_initializers:
        registry.check("initializer", name, lg.initializer_args if name == lg.initializer else {},
                       where="learngene.compare_initializers")
    # an initializer holds only its options: made now, its own value checks (a negative ridge) run before any phase
    registry.build("initializer", lg.initializer, options=lg.initializer_args, where="learngene.initializer_args")
    return {kind: {"name": name, "options": json.loads(json.dumps(options))} for kind, (name, options) in chosen.items()}


# --------------------------------------------------------------------------- phases
def obtain_ancestry(config, lg: LearngeneConfig, data: Data, base: TrainConfig, out_dir: pathlib.Path, registry) -> AncestryAdapter:  # noqa: ANN001
    """The ancestry: a model file, the ``[model]`` weights, or trained here (phase ``ancestry``)."""
    if lg.ancestry:
        adapter = load_model(lg.ancestry, registry)
    else:
        model_cfg = ModelConfig.from_config(config)
        if model_cfg.pretrained or model_cfg.checkpoint:
            adapter = build_model(data.spec, model_cfg, seed=base.seed)
        else:
            train = lg.train_config(base, "ancestry")
            sub = {"data": config["data"], "model": config["model"], "train": dataclasses.asdict(train)}
            adapter = load_model(train_model(sub, out_dir, name="ancestry", save_config=False), registry)
    spec = data.spec
    if adapter.num_classes != spec.num_classes or tuple(adapter.input_size) != spec.input_size:
        raise ConfigError(
            f"the ancestry ({adapter.num_classes} classes, input {adapter.input_size}) does not fit the data "
            f"({spec.num_classes} classes, input {spec.input_size}); set [data] img_size / in_chans or use another ancestry"
        )
    adapter.model.eval()
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    return adapter


def distil_rows(config, lg: LearngeneConfig, data: Data, base: TrainConfig, ancestry: AncestryAdapter, out_dir: pathlib.Path, registry) -> dict[str, Any]:  # noqa: ANN001
    """Build, initialise and distil every auxiliary model (phase ``distill-row<r>``)."""
    parts = components(lg, registry)
    design = registry.build("design", lg.design, options=parts["design"]["options"], where="learngene.design_args")
    shapes = design.rows(ancestry.shape)
    check_rank(lg.stitch_rank, LearngenePoolMethod(paths=lg.paths).stitches(shapes), "learngene.stitch_rank")  # before any row
    with meta_skeleton():  # the rows on the meta device: stitchable (one input, joinable boundaries) before any distillation
        check_stitchable(LearngenePoolMethod(paths=lg.paths), [type(ancestry).from_arch(ancestry.resized(s)) for s in shapes])
    train = lg.train_config(base, "distill")
    adapters: list[AncestryAdapter] = []
    extras: dict[str, torch.Tensor] = {}
    levels: dict[str, list[list[int]]] = {}
    accuracy: dict[str, float] = {}
    ctx = dist_context(base.device)
    students = []
    for r, shape in enumerate(shapes):
        with seeded(derive_seed("learngene-row", train.seed, r)):
            row = type(ancestry).from_arch(design.row_arch(ancestry.resized(shape)))
            design.initialize(row, ancestry)
            options = dict(parts["loss"]["options"])
            if "layout" in inspect.signature(registry.get("loss", lg.loss).for_models).parameters:
                options["layout"] = ancestry.feature_layout  # W acts on channels: last dim, or dim 1 of a CNN map
            loss = registry.build("loss", lg.loss, ancestry.shape, shape, options=options,
                                  where="learngene.loss_args")
        students.append(Student(AuxiliaryDistillationTask(row, ancestry, loss, alpha=lg.alpha), train, f"distill-row{r}",
                                _phase_config(config, lg, r)))
    # every row learns from the same ancestry on the same batches: one ancestry forward per batch for all
    fit_together(students, data, out_dir=out_dir, together=lg.together)
    for r, student in enumerate(students):
        assert isinstance(student.task, AuxiliaryDistillationTask)
        row, loss = student.task.student, student.task.distill
        store_matrices(extras, r, "W", learned_matrices(loss, "block"))
        store_matrices(extras, r, "M", learned_matrices(loss, "attention"))
        levels[str(r)] = [list(p) for p in getattr(loss, "pairs", [])]
        if len(data.val):  # type: ignore[arg-type]
            accuracy[str(r)] = evaluate(row.model, data.val_loader(rank=ctx.rank, world_size=ctx.world_size))["top1"]
        row.model.to("cpu")
        adapters.append(row)
    info = {
        "learngene": {
            "ancestry": {**ancestry.shape.to_json(), "arch": ancestry.arch()},
            "levels": levels,
            "alpha": lg.alpha,
            "terms": list(lg.terms),
            "auxiliary_val_top1": accuracy,
        }
    }
    return {"adapters": adapters, "extras": extras, "info": info}


def learned_matrices(loss: DistillationLoss, term: str) -> list[torch.Tensor]:
    """The per-level ``W`` (``term="block"``) or ``M`` (``"attention"``) a loss learned; none for a loss without them."""
    if isinstance(loss, LearngeneDistillation):
        return loss.block_matrices() if term == "block" else loss.attention_matrices()
    if isinstance(loss, (BlockLoss if term == "block" else AttentionLoss)):
        return list(loss.matrices)
    return []


def initialize_stitches(pool: Pool, name: str, lg: LearngeneConfig, data: Data, base: TrainConfig, registry,  # noqa: ANN001
                        options: Mapping[str, Any] | None = None) -> None:
    """Run the stitch initializer ``name`` with ``options`` on ``pool`` (with ``init_images`` training images if it needs them)."""
    init = registry.build("initializer", name, options=options, where="learngene.initializer_args")
    images = None
    if getattr(init, "needs_images", False):
        images, _ = next(iter(data.eval_loader("train", batch_size=lg.init_images)))
    pool.to("cpu")
    init.initialize(pool, InitContext(images=images, seed=derive_seed("stitch-init", base.seed)))
    pool.info.setdefault("learngene", {})["initializer"] = name


def finetune_student(pool: Pool, config, lg: LearngeneConfig, base: TrainConfig, ancestry: AncestryAdapter, registry) -> Student:  # noqa: ANN001
    """The pool's fine-tuning, one path per step from the sampler (phase ``finetune-<initializer>``), for :func:`fit_together`."""
    train = lg.train_config(base, "finetune")
    macs = [count_macs(pool.descendant(p)) for p in pool.paths]
    sampler = registry.build("sampler", lg.sampler, pool.paths, macs, options=lg.sampler_args, where="learngene.sampler_args")
    task = PoolTask(
        pool, sampler,
        teacher=ancestry if lg.finetune_distillation else None,
        distillation="soft" if lg.finetune_distillation else "none",
        tau=lg.tau,
        reduction=lg.prediction_reduction,
    )
    return Student(task, train, f"finetune-{lg.initializer}", _phase_config(config, lg, None))


# --------------------------------------------------------------------------- helpers
_REPORT_ONLY = ("compare_initializers", "eval_split", "pool_file", "together")
_FINETUNE_ONLY = ("paths", "initializer", "initializer_args", "init_images", "sampler", "sampler_args",
                  "stitch_rank", "stitch_alpha", "finetune_distillation", "finetune")


def _phase_config(config: Mapping[str, Any], lg: LearngeneConfig, row: int | None) -> dict[str, Any]:
    """What a phase's checkpoint identity holds: the data, the ancestry and the settings the phase depends on.

    ``[train]`` is left out (the engine adds the phase's effective TrainConfig);
    a distillation phase ignores the fine-tuning settings, so changing the
    initializer or sampler reuses the distilled rows.
    """
    learngene = {k: v for k, v in dataclasses.asdict(lg).items() if k not in _REPORT_ONLY}
    if row is not None:
        learngene = {k: v for k, v in learngene.items() if k not in _FINETUNE_ONLY}
        learngene["row"] = row
    return json.loads(json.dumps({"data": config.get("data"), "model": config.get("model"), "learngene": learngene}))


def _top1(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {name: float(r["top1"]) for name, r in results.items()}
