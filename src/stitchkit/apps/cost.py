"""Training compute of a build config, on paper: what a pool costs, and what training alone would.

A method describes the phases its build runs (:meth:`stitchkit.core.interfaces.Method.training_phases`):
for each, the recipe (epochs, batch size, step cap) and the forward MACs per
image of the networks it trains and of the frozen networks it only runs
(teachers). This module turns that into images seen and FLOPs, with one
convention, stated once:

- a forward pass costs ``2 x MACs`` FLOPs (a multiply and an add per MAC; MACs
  are counted as the planner counts them, see :mod:`stitchkit.pool.measure`);
- a trained network costs 3 forward passes per image (forward + backward, the
  backward counted as twice the forward); a frozen network 1;
- images seen in a phase = ``epochs x floor(N / batch) x batch`` for a training
  set of ``N`` images (the engine drops incomplete batches), capped by ``max_steps``;
- phases of kind ``"pretraining"`` are not run by the build (weights loaded from
  timm or a file); they are priced at ``pretrain_epochs`` on the same data so
  that "pool vs alone" can be read with or without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..core.errors import ConfigError, PoolFormatError
from ..core.registry import default_registry
from ..core.plans import DEFAULT_PRETRAIN_EPOCHS, FLOPS_PER_MAC, FROZEN_PASSES, KINDS, TRAINED_PASSES, Phase, TrainingPlan  # noqa: F401 - re-exported: the priced plan's vocabulary
from ..engine.data import DataConfig, DataSpec, build_data
from ..engine.model import build_model, check_model_metadata
from ..pool.features import stitch_places
from ..pool.measure import count_macs

def expected_step_macs(sampler: Any, macs: Sequence[int], *, draws: int = 4096, seed: int = 0) -> tuple[float, bool]:
    """Mean forward MACs of one training step under ``sampler`` (summed over the paths a step trains).

    Exact for the ``uniform`` sampler (the mean over paths); other samplers are
    drawn ``draws`` times from a seeded generator. Returns ``(macs, exact)``.
    """
    paths = list(sampler.paths)
    if len(paths) != len(macs):
        raise ConfigError(f"got {len(macs)} MAC counts for {len(paths)} paths")
    if getattr(sampler, "name", "") == "uniform":
        return sum(macs) / len(macs), True
    index = {p: i for i, p in enumerate(paths)}
    g = torch.Generator().manual_seed(seed)
    total = 0
    for _ in range(draws):
        total += sum(macs[index[p]] for p in sampler.sample(g))
    return total / draws, False


def summarize(
    plan: TrainingPlan,
    *,
    train_images: int,
    eval_images: int = 0,
    gpu_tflops: float | None = None,
    mfu: float | None = None,
    alone: bool = False,
) -> dict[str, Any]:
    """Images, FLOPs (and GPU hours) per phase and in total, as a JSON-ready dict."""
    if train_images < 1:
        raise ConfigError(f"the training set must hold at least one image, got {train_images}")
    if (gpu_tflops is None) != (mfu is None):
        raise ConfigError("give --gpu-tflops and --mfu together (peak TFLOP/s of one GPU, and the fraction of it reached)")
    if gpu_tflops is not None and mfu is not None:
        if not (math.isfinite(gpu_tflops) and gpu_tflops > 0):
            raise ConfigError(f"--gpu-tflops must be a positive number, got {gpu_tflops}")
        if not (math.isfinite(mfu) and 0 < mfu <= 1):
            raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")

    def rows(phases: Sequence[Phase]) -> list[dict[str, Any]]:
        out = []
        for p in phases:
            images = p.images_seen(train_images)
            flops = images * p.flops_per_image()
            row = {**asdict(p), "images_seen": images, "flops": flops}
            if gpu_tflops is not None and mfu is not None:
                row["gpu_hours"] = flops / (gpu_tflops * 1e12 * mfu) / 3600
            out.append(row)
        return out

    def total(table: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> float:
        return float(sum(r["flops"] for r in table if r["kind"] in kinds))

    phases = rows(plan.phases)
    result: dict[str, Any] = {
        "convention": (
            f"FLOPs = {FLOPS_PER_MAC} x MACs per forward; trained networks {TRAINED_PASSES} forwards per image "
            f"(forward + backward), frozen networks {FROZEN_PASSES}; images per phase = epochs x floor(N / batch) x batch"
        ),
        "train_images": train_images,
        "eval_images": eval_images,
        "phases": phases,
        "build_flops": total(phases, ("build",)),
        "evaluation_flops": total(phases, ("evaluation",)),
        "pretraining_flops": total(phases, ("pretraining",)),
        "notes": list(plan.notes),
    }
    result["total_flops"] = result["build_flops"] + result["pretraining_flops"]
    if alone:
        if not plan.alone:
            raise ConfigError("this method does not describe how its descendants would be trained alone")
        shared = [r for r in phases if r["name"] in plan.shared]
        table = rows(plan.alone)
        result["alone"] = {
            "descendants": table,
            "shared_phases": [r["name"] for r in shared],
            "shared_flops": float(sum(r["flops"] for r in shared)),
            "descendants_flops": float(sum(r["flops"] for r in table)),
        }
        result["alone"]["total_flops"] = result["alone"]["shared_flops"] + result["alone"]["descendants_flops"]
        result["alone"]["ratio_to_pool"] = result["alone"]["total_flops"] / result["total_flops"] if result["total_flops"] else math.inf
    if gpu_tflops is not None and mfu is not None:
        result["gpu"] = {"tflops": gpu_tflops, "mfu": mfu}
        for key in ("build_flops", "pretraining_flops", "total_flops"):
            result[key.replace("flops", "gpu_hours")] = result[key] / (gpu_tflops * 1e12 * mfu) / 3600
        if alone:
            result["alone"]["total_gpu_hours"] = result["alone"]["total_flops"] / (gpu_tflops * 1e12 * mfu) / 3600
    return result


def training_cost(
    config: Mapping[str, Any],
    *,
    registry: Any = None,
    train_images: int | None = None,
    eval_images: int | None = None,
    num_classes: int | None = None,
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS,
    gpu_tflops: float | None = None,
    mfu: float | None = None,
    alone: bool = False,
) -> dict[str, Any]:
    """The training compute of a resolved build config (see the module docstring for the convention).

    The data set's size and class count are read from the data source unless
    given (``train_images``, ``eval_images``, ``num_classes``); nothing is
    trained and every network is built on the meta device.
    """
    if pretrain_epochs < 0:
        raise ConfigError(f"--pretrain-epochs must be >= 0, got {pretrain_epochs}")
    for flag, value in (("--images", train_images), ("--eval-images", eval_images), ("--num-classes", num_classes)):
        if value is not None and value < (0 if flag == "--eval-images" else 1):
            raise ConfigError(f"{flag} must be positive, got {value}")
    name = config.get("method")
    if not name:
        raise ConfigError("the config names no method; add e.g. method = \"learngene-pool\" at the top")
    if registry is None:
        registry = default_registry()
    method = registry.create("method", name)
    data_cfg = DataConfig.from_config(dict(config))
    if train_images is None or num_classes is None or eval_images is None:
        sizes = data_sizes(data_cfg, config.get("method", ""))
        train_images = sizes["train"] if train_images is None else train_images
        eval_images = sizes["eval"] if eval_images is None else eval_images
        num_classes = sizes["classes"] if num_classes is None else num_classes
    spec = DataSpec(in_chans=data_cfg.in_chans, img_size=data_cfg.img_size, num_classes=num_classes)
    plan = method.training_phases(
        config, spec=spec, registry=registry, eval_images=eval_images, pretrain_epochs=pretrain_epochs
    )
    result = summarize(plan, train_images=train_images, eval_images=eval_images, gpu_tflops=gpu_tflops, mfu=mfu, alone=alone)
    result = {"method": name, "description": config.get("description", ""), "num_classes": num_classes, **result}
    return result


def meta_network(spec: Any, model_cfg: Any, registry: Any = None) -> Any:
    """The ``[model]``-style network ``model_cfg`` describes, on the meta device, without its weights.

    Loaded weights (``pretrained``, ``checkpoint``) do not change the
    architecture, so they are not fetched: nothing is downloaded or read.
    """
    shape_only = dataclasses.replace(model_cfg, pretrained=False, checkpoint="")
    with torch.device("meta"):
        return build_model(spec, shape_only, seed=0, registry=registry)


def timm_teacher_macs(name: str, spec: Any, registry: Any) -> int:
    """Forward MACs per image of the ``timm:NAME`` teacher, built on the meta device (nothing downloaded):
    through the adapter the plugins name for it, as :func:`~stitchkit.engine.teacher.load_teacher` builds it
    (the family's declared attention MACs counted), else as the plain timm classifier (a RegNet's convolutions)."""
    from ..engine.model import ModelConfig

    try:
        family = registry.ancestry_for(name)
    except ConfigError:  # no adapter builds it: the teacher is a logits-only timm model
        family = None
    if family is not None:
        return network_macs(meta_network(spec, ModelConfig(adapter=family, timm_name=name), registry))
    import timm

    shape = {"num_classes": spec.num_classes, "in_chans": spec.in_chans}
    with torch.device("meta"):
        try:
            try:  # transformers take the data's image size; CNNs have no such argument
                model = timm.create_model(name, img_size=spec.img_size, **shape)
            except TypeError:
                model = timm.create_model(name, **shape)
        except Exception as exc:  # noqa: BLE001 - an unknown name, an unbuildable variant
            raise ConfigError(f"teacher timm:{name}: timm cannot build it ({type(exc).__name__}: {exc})") from None
    return count_macs(model, (spec.in_chans, spec.img_size, spec.img_size))


def meta_network_file(path: str, registry: Any) -> Any:
    """A network saved by ``stitchkit train`` (a model file), rebuilt on the meta device from its metadata only."""
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{file}: model file not found")
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{file}: unreadable model file ({exc})") from None
    try:
        check_model_metadata(file, meta)
    except PoolFormatError as exc:
        raise ConfigError(str(exc)) from None
    if "arch" not in meta or "adapter" not in meta:
        raise ConfigError(f"{file}: not a stitchkit model file (no arch or adapter in its metadata)")
    with torch.device("meta"):
        return registry.ancestry(meta["adapter"]).from_arch(json.loads(meta["arch"]))


def loaded_phase(name: str, path: str, net: Any, pretrain_epochs: int, batch_size: int) -> Phase:
    """The pretraining phase of a network loaded from ``path``: a model file written by ``stitchkit train``
    (or an SN-Net build's trained anchor) is priced at the budget it records (its steps x its batch size),
    anything else at ``pretrain_epochs``."""
    info: dict[str, Any] = {}
    try:
        with safe_open(str(pathlib.Path(path).expanduser()), framework="pt") as fh:
            info = json.loads((fh.metadata() or {}).get("info", "{}"))
    except (SafetensorError, OSError, ValueError):
        info = {}
    batch = ((info.get("config") or {}).get("train") or {}).get("batch_size", info.get("batch_size"))  # train / SN-Net anchors
    if isinstance(info.get("steps"), int) and isinstance(batch, int):
        return Phase(name, f"{net.shape} from {path} (trained {info['steps']:,} steps of batch {batch}, as recorded)",
                     images=info["steps"] * batch, trained_macs=network_macs(net), kind="pretraining")
    return Phase(name, f"{net.shape} from {path}", pretrain_epochs, batch_size, trained_macs=network_macs(net), kind="pretraining")


def network_macs(adapter: Any) -> int:
    """Forward MACs per image of one network (on any device, the meta device included)."""
    return count_macs(adapter)  # the adapter declares what hooks cannot count (attention matmuls)


def path_macs(pool: Any) -> list[int]:
    """Forward MACs per image of every path of ``pool``, in path order (each part counted once)."""
    parts = pool.part_macs()
    return [pool.path_macs(p, parts) for p in pool.paths]


def feature_passes_macs(pool: Any, row_macs: Sequence[int]) -> int:
    """MACs per image a data-driven stitch initializer spends collecting features.

    :func:`stitchkit.pool.features.collect_stitch_features` runs the front and the
    end row of every row pair that shares a used stitch layer once per image.
    """
    pairs = {(p.front, p.end) for places in stitch_places(pool).values() for p in places}
    return sum(row_macs[a] + row_macs[b] for a, b in pairs)


def data_sizes(cfg: Any, method: str = "") -> dict[str, int]:
    """Training images, evaluation images (the test split) and classes of a ``[data]`` section."""
    try:
        data = build_data(cfg)
    except (ConfigError, OSError, FileNotFoundError) as exc:
        raise ConfigError(
            f"cannot read the data set's size from [data] ({exc}); give --images N --eval-images M --num-classes C "
            f"(ImageNet-1k: --images 1281167 --eval-images 50000 --num-classes 1000)"
        ) from None
    return {"train": len(data.train), "eval": len(data.test) or len(data.val), "classes": data.spec.num_classes}  # type: ignore[arg-type]


def format_cost(result: Mapping[str, Any]) -> str:
    """A plain-text table of a :func:`training_cost` result."""
    hours = "gpu" in result
    lines = [
        f"method {result['method']}  {result.get('description', '')}".rstrip(),
        f"training set {result['train_images']:,} images, evaluation {result['eval_images']:,} images, {result['num_classes']} classes",
        f"convention: {result['convention']}",
        "",
    ]
    header = f"{'phase':<34} {'kind':<11} {'epochs':>6} {'images':>15} {'trained GMACs':>13} {'frozen GMACs':>12} {'FLOPs':>10}"
    if hours:
        header += f" {'GPU h':>9}"
    lines += [header, "-" * len(header)]

    def line(r: Mapping[str, Any]) -> str:
        text = (
            f"{r['name'][:34]:<34} {r['kind']:<11} {r['epochs'] if r['images'] is None else '-':>6} {r['images_seen']:>15,} "
            f"{r['trained_macs'] / 1e9:>13.4f} {r['frozen_macs'] / 1e9:>12.4f} {r['flops']:>10.3e}"
        )
        return text + (f" {r['gpu_hours']:>9.2f}" if hours else "")

    lines += [line(r) for r in result["phases"]]
    lines.append("")
    lines.append(f"training in the build:  {result['build_flops']:.3e} FLOPs")
    lines.append(f"pretraining:            {result['pretraining_flops']:.3e} FLOPs (loaded weights, priced at the recipe shown)")
    lines.append(f"build + pretraining:    {result['total_flops']:.3e} FLOPs")
    lines.append(f"evaluation (not above): {result['evaluation_flops']:.3e} FLOPs")
    if hours:
        lines.append(f"GPU hours at {result['gpu']['tflops']} TFLOP/s x MFU {result['gpu']['mfu']}: build {result['build_gpu_hours']:,.1f}, with pretraining {result['total_gpu_hours']:,.1f}")
    if "alone" in result:
        a = result["alone"]
        lines += ["", f"every descendant trained alone ({len(a['descendants'])}):"]
        lines += [line(r) for r in a["descendants"]]
        shared = ", ".join(a["shared_phases"]) or "none"
        lines.append(
            f"alone total: {a['total_flops']:.3e} FLOPs (shared phases counted once: {shared}) = "
            f"{a['ratio_to_pool']:.2f}x the pool's build + pretraining"
        )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
