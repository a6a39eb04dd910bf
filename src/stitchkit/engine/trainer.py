"""The one training loop every method drives through a task.

AdamW with a warmup + cosine schedule (a pure function of the step, so resume
needs no scheduler state), gradient clipping, label smoothing, bf16 autocast
on GPU, a frozen teacher run once per step, per-step path sampling seeded
from ``(seed, step)`` on every rank, DistributedDataParallel under torchrun,
and checkpoints from which a killed run resumes bit-exactly on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import Path
from .checkpoint import (
    TrainState,
    b64,
    checkpoint_files,
    load_model_state,
    load_optimizer,
    numpy_rng_state,
    python_rng_state,
    read_checkpoint,
    save_checkpoint,
    set_numpy_rng_state,
    set_python_rng_state,
    unb64,
)
from .config import section, write_json_atomic
from .data import Data, derive_seed
from .distributed import DistContext, all_gather_bytes, all_reduce_sum, barrier, dist_context
from .evaluate import evaluate
from .runlog import RunLog, append_run_record
from .tasks import Batch, TrainTask

PRECISIONS = ("auto", "fp32", "bf16")
MIXUP_MODES = ("batch", "pair", "elem")
#: Keys that change how a run reports, never what it computes: left out of a checkpoint's identity.
OPERATIONAL_KEYS = {
    "train": ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "progress", "tensorboard"),
    "data": ("num_workers", "eval_batch_size"),
    "": ("description", "out_dir"),
}


@dataclass
class TrainConfig:
    """The ``[train]`` section: one phase's hyper-parameters."""

    seed: int = 0
    epochs: int = 10
    #: Stop after this many optimizer steps (0: run all epochs); the schedule spans the shorter.
    max_steps: int = 0
    #: Global batch size, split evenly over the processes.
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    #: Max global grad norm (0: no clipping).
    clip_grad: float = 1.0
    label_smoothing: float = 0.1
    #: Mixup / CutMix through ``timm.data.Mixup`` (the DeiT recipe: ``mixup = 0.8``, ``cutmix = 1.0``;
    #: 0 turns each off). Targets become soft (label smoothing folded in) and the loss soft-target CE.
    mixup: float = 0.0
    cutmix: float = 0.0
    #: Probability of mixing a batch at all, and of CutMix rather than Mixup when both are on.
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    #: Mixing parameters drawn per ``"batch"``, ``"pair"`` or ``"elem"``.
    mixup_mode: str = "batch"
    #: "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32" or "bf16".
    precision: str = "auto"
    device: str = "auto"
    #: Also checkpoint every N steps (0: only at the end of each epoch).
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    #: Evaluate on the val split every N epochs (0: never during training).
    eval_every: int = 1
    progress: bool = True
    tensorboard: bool = False
    #: Run each step's forward and backward through ``torch.compile`` (one graph per path, cached);
    #: falls back to eager with a warning where no compiler works. Off by default: on CPU it costs
    #: tens of seconds per path to compile and saves a few percent per step (benchmarks/RESULTS.md).
    compile: bool = False

    def validate(self, where: str = "train") -> None:
        positive = ("epochs", "batch_size", "keep_checkpoints", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        from ..core import limits

        limits.check_int(self.batch_size, f"{where}.batch_size", maximum=limits.MAX_BATCH_SIZE, limit="MAX_BATCH_SIZE")
        if self.tensorboard:  # an optional package the requested output needs: say so now, not at the first phase
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError(f"{where}.tensorboard = true but TensorBoard is not installed; "
                                  "run 'pip install tensorboard' or set tensorboard = false")
        for key in ("max_steps", "checkpoint_every", "eval_every", "warmup_epochs", "weight_decay", "clip_grad", "min_lr"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be positive, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{where}.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"{where}.mixup and {where}.cutmix must be >= 0 (0 turns one off), got {self.mixup}, {self.cutmix}")
        for key in ("mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{where}.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.mixup_mode not in MIXUP_MODES:
            raise ConfigError(f"{where}.mixup_mode must be one of {', '.join(MIXUP_MODES)}, got {self.mixup_mode!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{where}.betas must be two numbers in [0, 1), got {self.betas}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{where}.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainConfig:
        return section(config, "train", cls)

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (Mixup or CutMix on)."""
        return self.mixup > 0 or self.cutmix > 0

    def mixup_fn(self, num_classes: int) -> Any:
        """timm's ``Mixup`` for this config (``None`` when mixing is off); it also applies label smoothing."""
        if not self.mixing:
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mixup_prob, switch_prob=self.mixup_switch_prob,
            mode=self.mixup_mode, label_smoothing=self.label_smoothing, num_classes=num_classes,
        )


@dataclass
class StepState:
    """What callbacks see. ``model`` is the task's trainable module."""

    step: int
    epoch: int
    batch: int
    loss: float
    paths: list[str]
    rank: int
    world_size: int
    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[str, StepState], None]


@dataclass
class FitResult:
    """How a phase ended: steps and epochs done, last logged metrics, final checkpoint."""

    steps: int
    epochs: int
    last_metrics: dict[str, Any]
    checkpoint: pathlib.Path | None
    #: Training wall time of the phase, summed over resumed sessions (a skipped phase keeps its original time).
    seconds: float = 0.0
    #: True when the phase had already finished and was skipped.
    skipped: bool = False


def learning_rate(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters the model's family excludes from weight decay, by their names in ``model``.

    timm's own convention (what ``timm.optim.create_optimizer_v2`` reads): a
    network's ``no_weight_decay()`` names them (a ViT's position embedding and
    class token, a Swin's relative position bias tables). Every submodule that
    has the method is asked, so a pool or a student-plus-loss module works too
    and the engine names no family's parameters itself.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        ask = getattr(module, "no_weight_decay", None)
        if not callable(ask):
            continue
        try:
            keys = ask()
        except TypeError:  # a method of another meaning that takes arguments
            continue
        names |= {f"{prefix}.{k}" if prefix else str(k) for k in keys}
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms (ndim <= 1) or what the family's
    ``no_weight_decay()`` names (:func:`no_decay_names`)."""
    skip = no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run_identity(config: Mapping[str, Any] | None, phase: str, train: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed: config, phase and hyper-parameters."""
    cfg = json.loads(json.dumps(dict(config or {})))
    for sec, keys in OPERATIONAL_KEYS.items():
        node = cfg if not sec else cfg.get(sec)
        if isinstance(node, dict):
            for k in keys:
                node.pop(k, None)
    tr = dataclasses.asdict(train)
    for k in OPERATIONAL_KEYS["train"]:
        tr.pop(k)
    return {"config": cfg, "phase": phase, "train": tr}


class _TaskForward(nn.Module):
    """The module DDP wraps: its forward is the task's loss, summed over the step's paths.

    The teacher's taps and the paths are set as attributes before the call, so
    DDP only ever sees tensors in its inputs and outputs.
    """

    def __init__(self, task: TrainTask, model: nn.Module) -> None:
        super().__init__()
        self.task, self.model = task, model
        self.teacher_taps: Any = None
        self.paths: Sequence[Path | None] = [None]
        self.label_smoothing = 0.0
        self.metrics: dict[str, float] = {}

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = Batch(images, targets, self.label_smoothing)
        total: torch.Tensor | None = None
        metrics: dict[str, float] = {}
        for path in self.paths:
            out = self.task.loss(self.model, batch, self.teacher_taps, path)
            loss, extra = (out if isinstance(out, tuple) else (out, {}))
            for k, v in extra.items():
                metrics[k] = metrics.get(k, 0.0) + float(v)
            total = loss if total is None else total + loss
        assert total is not None
        self.metrics = metrics
        return total


#: Keyword arguments of ``torch.compile`` for ``train.compile`` (the tests swap in a counting backend).
COMPILE_OPTIONS: dict[str, Any] = {}


class _CompiledStep:
    """``torch.compile`` of the step's module, run eagerly from the first failure on.

    Dynamo keys its cache on the step's paths, so each path (or set of paths) gets
    its own graph, compiled once; the recompile limit is raised to hold them all.
    A missing or broken compiler raises on the first call: then one warning, and
    eager from there on (the same results, only slower).
    """

    def __init__(self, module: nn.Module, graphs: int) -> None:
        import torch._dynamo.config as dynamo_config

        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, key):
                setattr(dynamo_config, key, max(getattr(dynamo_config, key), graphs + 2))
        self.module = module
        self.compiled: Callable[..., torch.Tensor] | None = torch.compile(module, **COMPILE_OPTIONS)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: warn once, run eager
                import warnings

                warnings.warn(f"train.compile: torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                              "training continues without it. Set train.compile = false to skip the attempt.", stacklevel=2)
                self.compiled = None
        return self.module(*args)  # type: ignore[no-any-return]


def _rng_snapshot(ctx: DistContext) -> dict[str, Any]:
    """Every rank's torch RNG states (gathered, no pickling); rank 0's python/numpy states."""
    cpu = all_gather_bytes(torch.get_rng_state(), ctx.device)
    out: dict[str, Any] = {
        "world_size": ctx.world_size,
        "torch_cpu": [b64(t) for t in cpu],
        "python": python_rng_state(),
        "numpy": numpy_rng_state(),
    }
    if ctx.device.type == "cuda":
        out["torch_cuda"] = [b64(t) for t in all_gather_bytes(torch.cuda.get_rng_state(ctx.device), ctx.device)]
    return out


def _restore_rng(rng: Mapping[str, Any], ctx: DistContext, fallback_seed: int) -> bool:
    """Restore this rank's RNG states; reseed from ``fallback_seed`` if the process count changed."""
    if rng.get("world_size") != ctx.world_size:
        import warnings

        warnings.warn(
            f"resuming with {ctx.world_size} processes from a checkpoint written by {rng.get('world_size')}: "
            f"random states cannot carry over, so this run reseeds from {fallback_seed} (the result will differ "
            "from an uninterrupted run)", stacklevel=2,
        )
        torch.manual_seed(fallback_seed)
        return False
    torch.set_rng_state(unb64(rng["torch_cpu"][ctx.rank]))
    if ctx.device.type == "cuda" and "torch_cuda" in rng:
        torch.cuda.set_rng_state(unb64(rng["torch_cuda"][ctx.rank]), ctx.device)
    set_python_rng_state(rng["python"])
    set_numpy_rng_state(rng["numpy"])
    return True


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the teacher during a phase; its flags come back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def fit(
    task: TrainTask,
    data: Data,
    train: TrainConfig,
    *,
    out_dir: str | pathlib.Path,
    phase: str,
    config: Mapping[str, Any] | None = None,
    callbacks: Iterable[Callback] = (),
) -> FitResult:
    """Train ``task`` on ``data.train`` for one phase; resume or skip from ``out_dir/<phase>``."""
    with contextlib.ExitStack() as stack:
        if task.teacher is not None:
            stack.enter_context(_frozen(task.teacher.model))
        return _fit(task, data, train, out_dir=out_dir, phase=phase, config=config, callbacks=callbacks)


def _fit(
    task: TrainTask,
    data: Data,
    train: TrainConfig,
    *,
    out_dir: str | pathlib.Path,
    phase: str,
    config: Mapping[str, Any] | None,
    callbacks: Iterable[Callback],
) -> FitResult:
    train.validate()
    callbacks = list(callbacks)
    ctx = dist_context(train.device)
    device = ctx.device
    if train.batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {train.batch_size} is not divisible by the {ctx.world_size} processes")
    per_rank = train.batch_size // ctx.world_size
    mixup = train.mixup_fn(data.spec.num_classes)
    if mixup is not None and per_rank % 2:  # batches are full (the loader drops the last partial one)
        raise ConfigError(
            f"train.mixup/cutmix pair each image with another: the per-process batch ({per_rank}) must be even; "
            f"change train.batch_size"
        )
    steps_per_epoch = data.steps_per_epoch(train.batch_size, ctx.world_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"train.batch_size {train.batch_size} is larger than the {len(data.train)} training images")  # type: ignore[arg-type]
    total = train.epochs * steps_per_epoch
    if train.max_steps:
        total = min(total, train.max_steps)
    warmup = round(train.warmup_epochs * steps_per_epoch)
    bf16 = train.precision == "bf16" or (train.precision == "auto" and device.type == "cuda")

    phase_dir = pathlib.Path(out_dir) / phase
    ckpt_dir = phase_dir / "checkpoints"
    identity = run_identity(config, phase, train)

    model = task.trainable().to(device)
    teacher = task.teacher
    if teacher is not None:
        teacher.model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas))  # type: ignore[arg-type]

    state = TrainState()
    started = time.perf_counter()
    found = checkpoint_files(ckpt_dir)
    last_ckpt: pathlib.Path | None = None
    if found:
        last_ckpt = found[-1][1]
        meta, tensors = read_checkpoint(last_ckpt, identity)
        load_model_state(model, tensors, last_ckpt.with_suffix(".safetensors"))
        load_optimizer(optimizer, tensors, meta["optimizer"])
        state = TrainState(meta["step"], meta["epoch"], meta["batch"], bool(meta["finished"]), dict(meta["metrics"]))
        _restore_rng(meta["rng"], ctx, derive_seed("train", train.seed, phase, ctx.rank, state.step))
    else:
        torch.manual_seed(derive_seed("train", train.seed, phase, ctx.rank))
        if mixup is not None:  # timm's Mixup draws from numpy's global generator
            import numpy as np

            np.random.seed(derive_seed("mixup", train.seed, phase, ctx.rank) % 2**32)
    seconds_before = float(state.metrics.get("train_s", 0.0))
    if state.finished:
        if ctx.is_main:
            append_run_record(out_dir, {"phase": phase, "event": "skipped", "steps": state.step, "train_s": seconds_before})
        barrier()
        return FitResult(state.step, state.epoch, state.metrics, last_ckpt, seconds_before, skipped=True)

    log = RunLog(phase_dir, phase=phase, total_steps=total, initial_step=state.step, active=ctx.is_main, progress=train.progress, tensorboard=train.tensorboard)
    if ctx.is_main:
        write_json_atomic(phase_dir / "run.json", identity)
        if found:
            log.truncate_after(state.step)
    barrier()  # every rank has read the checkpoint before rank 0 may replace it

    forward = _TaskForward(task, model)
    engine: nn.Module = forward
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Paths leave parameters unused: DDP must look for them every step.
        engine = DDP(forward, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    step: Callable[..., torch.Tensor] = engine
    if train.compile:
        step = _CompiledStep(engine, graphs=len(task.sampler.paths) if task.sampler is not None else 1)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    path_gen = torch.Generator()

    def save(finished: bool = False) -> pathlib.Path:
        state.finished = finished
        state.metrics["train_s"] = round(seconds_before + time.perf_counter() - started, 3)  # kept across resumes
        rng = _rng_snapshot(ctx)  # collective: every rank takes part
        path = ckpt_dir / f"step-{state.step:08d}.json"
        if ctx.is_main:
            order = {"sampler": "DistributedSampler(shuffle, drop_last)", "seed": train.seed, "epoch": state.epoch, "batch": state.batch, "world_size": ctx.world_size}
            path = save_checkpoint(ckpt_dir, state, model.state_dict(), optimizer, identity=identity, rng=rng, data_order=order, keep=train.keep_checkpoints)
        barrier()
        return path

    window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
    extra: dict[str, float] = {}
    try:
        while state.epoch < train.epochs and state.step < total:
            epoch = state.epoch
            model.train()
            loader = data.train_loader(per_rank, epoch=epoch, seed=train.seed, rank=ctx.rank, world_size=ctx.world_size, skip_batches=state.batch)
            for images, targets in loader:
                lr = learning_rate(state.step, total, warmup, train.lr, train.min_lr)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                if mixup is not None:  # soft targets, label smoothing included; the teacher sees the mixed images
                    images, targets = mixup(images, targets)
                if task.sampler is not None:
                    path_gen.manual_seed(derive_seed("path", train.seed, state.step))
                    paths: list[Path | None] = list(task.sampler.sample(path_gen))
                else:
                    paths = [None]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    taps = None
                    if teacher is not None:
                        with torch.no_grad():
                            taps = teacher.forward_taps(images, task.teacher_taps())
                    smoothing = 0.0 if mixup is not None else train.label_smoothing
                    forward.teacher_taps, forward.paths, forward.label_smoothing = taps, paths, smoothing
                    loss = step(images, targets)
                loss.backward()
                names = [p.name for p in paths if p is not None]
                if callbacks:
                    st = StepState(state.step, epoch, state.batch, float(loss.detach()), names, ctx.rank, ctx.world_size, model)
                    for cb in callbacks:
                        cb("after_backward", st)
                if train.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], train.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch += 1
                loss_value = float(loss.detach())
                window_loss += loss_value
                window_steps += 1
                for k, v in forward.metrics.items():
                    extra[k] = extra.get(k, 0.0) + v
                if state.step % train.log_every == 0 or state.step == total or state.batch == steps_per_epoch:
                    summed = all_reduce_sum(torch.tensor([window_loss, *extra.values()], dtype=torch.float64, device=device)) / ctx.world_size
                    now = time.perf_counter()
                    ips = window_steps * train.batch_size / max(now - window_t, 1e-9)
                    rec: dict[str, Any] = {"step": state.step, "epoch": epoch, "lr": lr, "loss": float(summed[0]) / window_steps, "images_per_s": ips}
                    rec.update({k: float(v) / window_steps for k, v in zip(extra, summed[1:].tolist())})
                    if names:
                        rec["paths"] = names
                    log.record(rec)
                    log.progress(window_steps, epoch=epoch, loss=f"{rec['loss']:.4f}", img_s=f"{ips:.0f}")
                    state.metrics = {k: v for k, v in rec.items() if k != "paths"}
                    state.metrics["train_s"] = round(seconds_before + now - started, 3)
                    window_loss, window_steps, window_t, extra = 0.0, 0, now, {}
                if callbacks:
                    st = StepState(state.step, epoch, state.batch, loss_value, names, ctx.rank, ctx.world_size, model, dict(state.metrics))
                    for cb in callbacks:
                        cb("step_end", st)
                if state.step >= total:
                    break
                if train.checkpoint_every and state.step % train.checkpoint_every == 0 and state.batch < steps_per_epoch:
                    save()
            if state.batch >= steps_per_epoch:
                state.epoch, state.batch = epoch + 1, 0
            judged = task.eval_model(model)
            if judged is not None and train.eval_every and state.batch == 0 and state.epoch % train.eval_every == 0 and len(data.val):  # type: ignore[arg-type]
                res = evaluate(judged, data.val_loader(rank=ctx.rank, world_size=ctx.world_size), device=device, precision="bf16" if bf16 else "fp32")
                val = {f"val_{k}": v for k, v in res.items()}
                log.record({"step": state.step, "epoch": epoch, **val})
                state.metrics.update(val)
            finished = state.step >= total or state.epoch >= train.epochs
            last_ckpt = save(finished=finished)
            if callbacks:
                st = StepState(state.step, epoch, state.batch, float("nan"), [], ctx.rank, ctx.world_size, model, dict(state.metrics))
                for cb in callbacks:
                    cb("epoch_end", st)
    finally:
        log.close()
    if callbacks:
        st = StepState(state.step, state.epoch, state.batch, float("nan"), [], ctx.rank, ctx.world_size, model, dict(state.metrics))
        for cb in callbacks:
            cb("fit_end", st)
    result = FitResult(state.step, state.epoch, dict(state.metrics), last_ckpt, float(state.metrics.get("train_s", 0.0)))
    if ctx.is_main:
        append_run_record(out_dir, {"phase": phase, "event": "resumed" if found else "trained", "steps": state.step,
                                    "train_s": result.seconds, "session_s": round(time.perf_counter() - started, 3)})
    return result


__all__ = ["TrainConfig", "FitResult", "StepState", "fit", "learning_rate", "no_decay_names", "param_groups", "run_identity"]
