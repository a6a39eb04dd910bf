"""The one training loop every method drives through a task.

AdamW with a warmup + cosine schedule (a pure function of the step, so resume
needs no scheduler state; optionally scaled by batch size as DeiT does),
gradient clipping, label smoothing, bf16 autocast, channels_last for
convolutional networks, an optional EMA of the weights, a frozen teacher run
once per step, per-step path sampling seeded from ``(seed, step)`` on every
rank, DistributedDataParallel under torchrun, and checkpoints from which a
killed run resumes bit-exactly on CPU. :func:`fit_together` trains several
students on the same batches with one teacher forward per batch, each as it
would train alone. Nothing is read back to the host inside a step; the loss
is read once per log line.
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
from typing import Any, cast

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
from .callbacks import Callback, StepState
from .tasks import Batch, TrainTask

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
MIXUP_MODES = ("batch", "pair", "elem")
#: Keys that change how a run reports, never what it computes: left out of a checkpoint's identity.
OPERATIONAL_KEYS = {
    "train": ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "progress", "tensorboard"),
    "data": ("num_workers", "eval_batch_size"),
    "": ("description", "out_dir"),
}
#: Options added after checkpoints were first written: left out of a run's identity at these defaults,
#: so runs checkpointed before them still resume.
_LATER_DEFAULTS: dict[str, Any] = {"model_ema": False, "model_ema_decay": 0.99996, "lr_reference_batch": 0, "memory_format": "auto"}
#: ``[train]`` keys students trained together must share: they see the same batches (order, mixing) in the same precision.
SHARED_KEYS = ("seed", "epochs", "max_steps", "batch_size", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob",
               "mixup_mode", "precision", "device", "memory_format")


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
    #: Keep an exponential moving average of the trained weights (timm's ``ModelEmaV3``, constant decay),
    #: evaluated beside them (``val_ema_*``), checkpointed, and written as ``<phase>/ema.safetensors``.
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    #: DeiT's linear learning-rate scaling: the peak lr is ``lr * batch_size / lr_reference_batch``
    #: (global batch; ``min_lr`` is not scaled); 0 uses ``lr`` as given.
    lr_reference_batch: int = 0
    #: "auto" (channels_last on CUDA for convolutional networks, see :func:`wants_channels_last`),
    #: "channels_last" or "contiguous": the memory format of the trained model, the teacher and the images.
    memory_format: str = "auto"

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
        if not 0.0 <= self.model_ema_decay < 1.0:
            raise ConfigError(f"{where}.model_ema_decay must be in [0, 1), got {self.model_ema_decay}")
        if self.lr_reference_batch < 0:
            raise ConfigError(f"{where}.lr_reference_batch must be >= 0 (0: no lr scaling), got {self.lr_reference_batch}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"{where}.memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {self.memory_format!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{where}.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainConfig:
        return section(config, "train", cls)

    @property
    def peak_lr(self) -> float:
        """The schedule's peak learning rate: ``lr``, scaled by ``batch_size / lr_reference_batch`` when that is set."""
        return self.lr * self.batch_size / self.lr_reference_batch if self.lr_reference_batch else self.lr

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
    #: The moving average of the trained module (``train.model_ema``; on the training device), else ``None``.
    ema: nn.Module | None = None


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
    for k, default in _LATER_DEFAULTS.items():
        if tr.get(k) == default:
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
        self.metrics: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = Batch(images, targets, self.label_smoothing)
        total: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        for path in self.paths:
            out = self.task.loss(self.model, batch, self.teacher_taps, path)
            loss, extra = (out if isinstance(out, tuple) else (out, {}))
            for k, v in extra.items():  # kept on the device: read when a log line is written
                v = torch.as_tensor(v).detach().to(images.device, torch.float64)
                metrics[k] = v if k not in metrics else metrics[k] + v
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


def wants_channels_last(model: nn.Module) -> bool:
    """Whether ``model`` is convolutional: it has a 2-D convolution whose windows overlap (stride < kernel).

    A ViT's or Swin's patch embedding (stride = kernel) is not; a ResNet's 3x3 or a
    ConvNeXt's depthwise 7x7 convolutions are. Those gain from channels_last on a GPU.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kernel, stride = m.kernel_size, m.stride
            if any(k > 1 and s < k for k, s in zip(kernel, stride)):
                return True
    return False


@dataclass
class Student:
    """One task of :func:`fit_together`: what it trains, its recipe, its phase (checkpoint folder) and observers."""

    task: TrainTask
    train: TrainConfig
    phase: str
    config: Mapping[str, Any] | None = None
    callbacks: Sequence[Callback] = ()


@dataclass
class _Plan:
    """What every student of a run shares: the process group, the batches and their number, the precision."""

    ctx: DistContext
    per_rank: int
    steps_per_epoch: int
    total: int
    epochs: int
    seed: int
    bf16: bool
    channels_last: bool
    mixup: Any
    teacher: Any
    request: Any


class _Member:
    """One student while it trains: its model, optimizer, EMA, checkpoint state, random state and log window."""

    def __init__(self, student: Student, plan: _Plan, out_dir: pathlib.Path) -> None:
        self.student, self.task, self.train = student, student.task, student.train
        self.phase, self.callbacks = student.phase, list(student.callbacks)
        self.out_dir = out_dir
        self.phase_dir = out_dir / student.phase
        self.ckpt_dir = self.phase_dir / "checkpoints"
        self.identity = run_identity(student.config, student.phase, student.train)
        device = plan.ctx.device
        self.model = self.task.trainable().to(device)
        if plan.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.train.weight_decay), lr=self.train.peak_lr,
                                           betas=tuple(self.train.betas))  # type: ignore[arg-type]
        self.warmup = round(self.train.warmup_epochs * plan.steps_per_epoch)
        self.ema: nn.Module | None = None
        self.state = TrainState()
        self.found = checkpoint_files(self.ckpt_dir)
        self.last_ckpt: pathlib.Path | None = self.found[-1][1] if self.found else None
        self.rng_cpu = torch.get_rng_state()
        self.rng_cuda: torch.Tensor | None = None
        #: The random states of the checkpoint resumed from (``None``: a fresh start).
        self.host_rng: Mapping[str, Any] | None = None
        self.started = time.perf_counter()
        self.seconds_before = 0.0
        self.window_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.window_extra: dict[str, torch.Tensor] = {}
        self.window_steps = 0
        self.window_t = time.perf_counter()
        self.log: RunLog | None = None
        self.forward = _TaskForward(self.task, self.model)
        self.step_fn: Callable[..., torch.Tensor] = self.forward
        self.last_lr, self.last_names = 0.0, [""][:0]
        self.last_loss = torch.zeros((), device=device)

    # ------------------------------------------------------------------ random state
    @contextlib.contextmanager
    def own_rng(self, ctx: DistContext) -> Iterator[None]:
        """This student's torch generators in place of the global ones (its drop path, dropout ...)."""
        torch.set_rng_state(self.rng_cpu)
        if ctx.device.type == "cuda" and self.rng_cuda is not None:
            torch.cuda.set_rng_state(self.rng_cuda, ctx.device)
        try:
            yield
        finally:
            self.rng_cpu = torch.get_rng_state()
            if ctx.device.type == "cuda":
                self.rng_cuda = torch.cuda.get_rng_state(ctx.device)

    def seed(self, ctx: DistContext, seed: int) -> None:
        with self.own_rng(ctx):
            torch.manual_seed(seed)

    def step_state(self, loss: torch.Tensor, paths: list[str], ctx: DistContext, metrics: bool = False) -> StepState:
        return StepState(self.state.step, self.state.epoch, self.state.batch, loss, paths, ctx.rank, ctx.world_size,
                         self.model, dict(self.state.metrics) if metrics else {}, self.phase)


def _check_together(students: Sequence[Student]) -> Any:
    """The one teacher ``students`` share (or ``None``); a ConfigError where they cannot see the same batches."""
    first = students[0]
    for other in students[1:]:
        for key in SHARED_KEYS + (("label_smoothing",) if first.train.mixing else ()):
            a, b = getattr(first.train, key), getattr(other.train, key)
            if a != b:
                raise ConfigError(
                    f"training {first.phase} and {other.phase} together: train.{key} differs ({a!r} vs {b!r}); students "
                    f"that share one teacher forward see the same batches, so it must match (or train them one at a time)"
                )
    phases = [s.phase for s in students]
    if len(set(phases)) != len(phases):
        raise ConfigError(f"training together: two students have the same phase name ({phases}); each needs its own folder")
    teachers = {id(s.task.teacher): s.task.teacher for s in students if s.task.teacher is not None}
    if len(teachers) > 1:
        raise ConfigError(f"training {', '.join(phases)} together: they distil from {len(teachers)} different teachers; "
                          "students trained together share one teacher (train the others one at a time)")
    return next(iter(teachers.values()), None)


def _peek(ckpt_dir: pathlib.Path) -> tuple[int, int, int, bool] | None:
    """(step, epoch, batch, finished) of the newest checkpoint in ``ckpt_dir``, from its JSON only (verified when loaded)."""
    found = checkpoint_files(ckpt_dir)
    if not found:
        return None
    try:
        meta = json.loads(found[-1][1].read_text(encoding="utf-8"))
        return int(meta["step"]), int(meta["epoch"]), int(meta["batch"]), bool(meta["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the full read reports it


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
    return fit_together([Student(task, train, phase, config, list(callbacks))], data, out_dir=out_dir)[0]


def fit_together(students: Sequence[Student], data: Data, *, out_dir: str | pathlib.Path, together: bool = True) -> list[FitResult]:
    """Train several tasks on the same batches, running their shared teacher once per batch.

    Each student keeps its own parameters, optimizer, schedule, EMA, checkpoints,
    log and random state (its drop path draws from its own generator, seeded as
    it would be alone), so its weights equal those of training it alone with
    :func:`fit`, bit for bit on CPU. All students are resident at once.
    ``together=False`` trains them one after the other instead (same results,
    one student's memory at a time). Students whose checkpoints stopped at
    different points resume one at a time.
    """
    students = list(students)
    if not students:
        return []
    for s in students:
        s.train.validate()
    _check_together(students)
    if not together or len(students) > 1 and _diverged(students, out_dir):
        return [fit_together([s], data, out_dir=out_dir)[0] for s in students]
    teacher = _check_together(students)
    with contextlib.ExitStack() as stack:
        if teacher is not None:
            stack.enter_context(_frozen(teacher.model))
        return _fit(students, data, pathlib.Path(out_dir), teacher)


def _diverged(students: Sequence[Student], out_dir: str | pathlib.Path) -> bool:
    """Whether the unfinished students' newest checkpoints stand at different points of the run."""
    points = {_peek(pathlib.Path(out_dir) / s.phase / "checkpoints") for s in students}
    unfinished = {p[:3] if p else (0, 0, 0) for p in points if not (p and p[3])}
    return len(unfinished) > 1


# --------------------------------------------------------------------------- the parts of a run
def _plan(students: Sequence[Student], data: Data, teacher: Any) -> _Plan:
    """Planning the run: processes, per-process batch, steps, precision, memory format, mixing."""
    train = students[0].train
    ctx = dist_context(train.device)
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
    bf16 = train.precision == "bf16" or (train.precision == "auto" and ctx.device.type == "cuda")
    if train.memory_format == "auto":
        channels_last = ctx.device.type == "cuda" and any(wants_channels_last(s.task.trainable()) for s in students)
    else:
        channels_last = train.memory_format == "channels_last"
    request = None
    if teacher is not None:
        request = students[0].task.teacher_taps()
        for s in students[1:]:
            if s.task.teacher is not None:
                request = request | s.task.teacher_taps()
        teacher.model.to(ctx.device)
        if channels_last:
            teacher.model.to(memory_format=torch.channels_last)
    return _Plan(ctx, per_rank, steps_per_epoch, total, train.epochs, train.seed, bf16, channels_last, mixup, teacher, request)


def _resume(m: _Member, plan: _Plan) -> None:
    """Resuming: weights, optimizer, EMA, position and random states from the newest checkpoint, or a fresh seed."""
    ctx, train = plan.ctx, m.train
    if m.last_ckpt is not None:
        meta, tensors = read_checkpoint(m.last_ckpt, m.identity)
        load_model_state(m.model, tensors, m.last_ckpt.with_suffix(".safetensors"))
        load_optimizer(m.optimizer, tensors, meta["optimizer"])
        m.state = TrainState(meta["step"], meta["epoch"], meta["batch"], bool(meta["finished"]), dict(meta["metrics"]))
        with m.own_rng(ctx):
            _restore_rng(meta["rng"], ctx, derive_seed("train", train.seed, m.phase, ctx.rank, m.state.step))
        m.host_rng = meta["rng"]
        if train.model_ema:
            m.ema = _make_ema(m.model, train)
            ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
            if ema_state:
                _averaged(m).load_state_dict(ema_state, strict=True)
            else:  # written before model_ema was on: the average starts here
                import warnings

                warnings.warn(f"{m.last_ckpt}: no EMA weights in this checkpoint; the moving average starts from the "
                              "resumed weights", stacklevel=3)
    else:
        m.seed(ctx, derive_seed("train", train.seed, m.phase, ctx.rank))
        if train.model_ema:
            m.ema = _make_ema(m.model, train)
    m.seconds_before = float(m.state.metrics.get("train_s", 0.0))


def _host_rng(m: _Member, plan: _Plan) -> None:
    """Python's and numpy's generators (timm's Mixup draws from numpy's), shared by the students that train:
    from the first one's checkpoint (a finished student's, resumed before, must not set them), or seeded fresh."""
    rng = m.host_rng
    if rng is not None and rng.get("world_size") == plan.ctx.world_size:
        set_python_rng_state(rng["python"])
        set_numpy_rng_state(rng["numpy"])
    elif rng is None and plan.mixup is not None:
        import numpy as np

        np.random.seed(derive_seed("mixup", plan.seed, plan.ctx.rank) % 2**32)  # every student sees the same mixing


def _make_ema(model: nn.Module, train: TrainConfig) -> nn.Module:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=train.model_ema_decay)  # type: ignore[no-any-return]


def _open_log(m: _Member, plan: _Plan, position: int) -> None:
    ctx = plan.ctx
    m.log = RunLog(m.phase_dir, phase=m.phase, total_steps=plan.total, initial_step=m.state.step, active=ctx.is_main,
                   progress=m.train.progress, tensorboard=m.train.tensorboard, position=position)
    if ctx.is_main:
        write_json_atomic(m.phase_dir / "run.json", m.identity)
        if m.found:
            m.log.truncate_after(m.state.step)


def _wrap(m: _Member, plan: _Plan) -> None:
    """Wrapping for DDP (paths leave parameters unused, so DDP looks for them every step) and ``torch.compile``."""
    ctx = plan.ctx
    engine: nn.Module = m.forward
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device = ctx.device
        engine = DDP(m.forward, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    m.step_fn = engine
    if m.train.compile:
        m.step_fn = _CompiledStep(engine, graphs=len(m.task.sampler.paths) if m.task.sampler is not None else 1)


def _save(m: _Member, plan: _Plan, finished: bool = False) -> pathlib.Path:
    ctx, state, train = plan.ctx, m.state, m.train
    state.finished = finished
    state.metrics["train_s"] = round(m.seconds_before + time.perf_counter() - m.started, 3)  # kept across resumes
    with m.own_rng(ctx):
        rng = _rng_snapshot(ctx)  # collective: every rank takes part
    path = m.ckpt_dir / f"step-{state.step:08d}.json"
    if ctx.is_main:
        order = {"sampler": "DistributedSampler(shuffle, drop_last)", "seed": train.seed, "epoch": state.epoch, "batch": state.batch, "world_size": ctx.world_size}
        extra = {f"ema.{k}": v for k, v in _averaged(m).state_dict().items()} if m.ema is not None else {}
        path = save_checkpoint(m.ckpt_dir, state, m.model.state_dict(), m.optimizer, identity=m.identity, rng=rng,
                               data_order=order, keep=train.keep_checkpoints, extra=extra)
    barrier()
    return path


def _step(m: _Member, plan: _Plan, images: torch.Tensor, targets: torch.Tensor, taps: Any, path_gen: torch.Generator) -> list[str]:
    """One optimizer step of one student: its paths, loss, backward, clipping, AdamW, EMA; nothing read back to the host."""
    ctx, train, state = plan.ctx, m.train, m.state
    lr = learning_rate(state.step, plan.total, m.warmup, train.peak_lr, train.min_lr)
    for g in m.optimizer.param_groups:
        g["lr"] = lr
    if m.task.sampler is not None:
        path_gen.manual_seed(derive_seed("path", train.seed, state.step))
        paths: list[Path | None] = list(m.task.sampler.sample(path_gen))
    else:
        paths = [None]
    names = [p.name for p in paths if p is not None]
    with m.own_rng(ctx):
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=plan.bf16):
            m.forward.teacher_taps = taps if m.task.teacher is not None else None
            m.forward.paths = paths
            m.forward.label_smoothing = 0.0 if plan.mixup is not None else train.label_smoothing
            loss = m.step_fn(images, targets)
        loss.backward()
    loss = loss.detach()
    for cb in m.callbacks:
        cb.after_backward(m.step_state(loss, names, ctx))
    if train.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([p for g in m.optimizer.param_groups for p in g["params"] if p.grad is not None], train.clip_grad)
    m.optimizer.step()
    m.optimizer.zero_grad(set_to_none=True)
    if m.ema is not None:
        m.ema.update(m.model)  # type: ignore[operator]
    state.step += 1
    state.batch += 1
    m.window_loss += loss.to(torch.float64)
    for k, v in m.forward.metrics.items():
        m.window_extra[k] = v if k not in m.window_extra else m.window_extra[k] + v
    m.window_steps += 1
    m.last_lr, m.last_names, m.last_loss = lr, names, loss
    return names


def _log_window(m: _Member, plan: _Plan) -> None:
    """The log window: the one host read of the accumulated loss and metrics, averaged over steps and ranks."""
    ctx, state = plan.ctx, m.state
    keys = list(m.window_extra)
    summed = all_reduce_sum(torch.stack([m.window_loss, *m.window_extra.values()])) / ctx.world_size
    values = summed.tolist()
    now = time.perf_counter()
    n = m.window_steps
    ips = n * m.train.batch_size / max(now - m.window_t, 1e-9)
    rec: dict[str, Any] = {"step": state.step, "epoch": state.epoch, "lr": m.last_lr, "loss": values[0] / n, "images_per_s": ips}
    rec.update({k: v / n for k, v in zip(keys, values[1:])})
    if m.last_names:
        rec["paths"] = m.last_names
    assert m.log is not None
    m.log.record(rec)
    m.log.progress(n, epoch=state.epoch, loss=f"{rec['loss']:.4f}", img_s=f"{ips:.0f}")
    state.metrics = {k: v for k, v in rec.items() if k != "paths"}
    state.metrics["train_s"] = round(m.seconds_before + now - m.started, 3)
    m.window_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
    m.window_extra, m.window_steps, m.window_t = {}, 0, now


def _end_epoch(m: _Member, plan: _Plan, data: Data, epoch: int) -> None:
    """The end of an epoch: validation (and of the EMA), a checkpoint, the callbacks."""
    ctx, state, train = plan.ctx, m.state, m.train
    if state.batch >= plan.steps_per_epoch:
        state.epoch, state.batch = epoch + 1, 0
    due = train.eval_every and state.batch == 0 and state.epoch % train.eval_every == 0 and len(data.val)  # type: ignore[arg-type]
    judged = m.task.eval_model(m.model) if due else None
    if judged is not None:
        precision = "bf16" if plan.bf16 else "fp32"
        res = evaluate(judged, data.val_loader(rank=ctx.rank, world_size=ctx.world_size), device=ctx.device, precision=precision)
        val = {f"val_{k}": v for k, v in res.items()}
        if m.ema is not None:
            averaged = m.task.eval_model(_averaged(m))
            if averaged is not None:
                res = evaluate(averaged, data.val_loader(rank=ctx.rank, world_size=ctx.world_size), device=ctx.device, precision=precision)
                val.update({f"val_ema_{k}": v for k, v in res.items()})
        assert m.log is not None
        m.log.record({"step": state.step, "epoch": epoch, **val})
        state.metrics.update(val)
    finished = state.step >= plan.total or state.epoch >= plan.epochs
    m.last_ckpt = _save(m, plan, finished=finished)
    if finished and m.ema is not None and ctx.is_main:
        _save_ema(m)
    for cb in m.callbacks:
        cb.epoch_end(StepState(state.step, epoch, state.batch, _nan(ctx), [], ctx.rank, ctx.world_size, m.model, dict(state.metrics), m.phase))


def _averaged(m: _Member) -> nn.Module:
    """The moving average's copy of the trained module."""
    return cast(nn.Module, cast(Any, m.ema).module)


def _save_ema(m: _Member) -> None:
    from ..io.files import write_bytes_atomic
    from safetensors.torch import save

    assert m.ema is not None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in _averaged(m).state_dict().items()}
    write_bytes_atomic(m.phase_dir / "ema.safetensors", save(tensors, metadata={"format": "pt", "stitchkit_format": "stitchkit-ema", "phase": m.phase}))


def _nan(ctx: DistContext) -> torch.Tensor:
    return torch.full((), float("nan"), device=ctx.device)


def _fit(students: Sequence[Student], data: Data, out_dir: pathlib.Path, teacher: Any) -> list[FitResult]:
    plan = _plan(students, data, teacher)
    ctx = plan.ctx
    members = [_Member(s, plan, out_dir) for s in students]
    results: dict[int, FitResult] = {}
    for m in members:
        _resume(m, plan)
    for i, m in enumerate(members):
        if m.state.finished:
            if ctx.is_main:
                append_run_record(out_dir, {"phase": m.phase, "event": "skipped", "steps": m.state.step, "train_s": m.seconds_before})
            results[i] = FitResult(m.state.step, m.state.epoch, m.state.metrics, m.last_ckpt, m.seconds_before, skipped=True,
                                   ema=_averaged(m) if m.ema is not None else None)
    live = [m for i, m in enumerate(members) if i not in results]
    if not live:
        barrier()
        _leave_rng(members, ctx)
        return [results[i] for i in range(len(members))]
    _host_rng(live[0], plan)
    for position, m in enumerate(live):
        _open_log(m, plan, position)
    barrier()  # every rank has read the checkpoint before rank 0 may replace it
    for m in live:
        _wrap(m, plan)
    path_gen = torch.Generator()
    first = live[0].state
    try:
        while first.epoch < plan.epochs and first.step < plan.total:
            epoch = first.epoch
            for m in live:
                m.model.train()
            loader = data.train_loader(plan.per_rank, epoch=epoch, seed=plan.seed, rank=ctx.rank, world_size=ctx.world_size, skip_batches=first.batch)
            for images, targets in loader:
                images = images.to(ctx.device, non_blocking=True)
                targets = targets.to(ctx.device, non_blocking=True)
                if plan.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if plan.mixup is not None:  # soft targets, label smoothing included; the teacher sees the mixed images
                    images, targets = plan.mixup(images, targets)
                taps = None
                if teacher is not None:  # once for every student
                    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=plan.bf16):
                        taps = teacher.forward_taps(images, plan.request)
                for m in live:
                    _step(m, plan, images, targets, taps, path_gen)
                step = first.step
                for m in live:
                    if step % m.train.log_every == 0 or step == plan.total or first.batch == plan.steps_per_epoch:
                        _log_window(m, plan)
                    for cb in m.callbacks:
                        cb.step_end(m.step_state(m.last_loss, m.last_names, ctx, metrics=True))
                if step >= plan.total:
                    break
                for m in live:
                    if m.train.checkpoint_every and step % m.train.checkpoint_every == 0 and first.batch < plan.steps_per_epoch:
                        _save(m, plan)
            for m in live:
                _end_epoch(m, plan, data, epoch)
    finally:
        for m in live:
            assert m.log is not None
            m.log.close()
    for m in live:
        st = m.state
        for cb in m.callbacks:
            cb.fit_end(StepState(st.step, st.epoch, st.batch, _nan(ctx), [], ctx.rank, ctx.world_size, m.model, dict(st.metrics), m.phase))
    shared = [m.phase for m in live] if len(live) > 1 else None
    for m in live:
        i = members.index(m)
        results[i] = FitResult(m.state.step, m.state.epoch, dict(m.state.metrics), m.last_ckpt, float(m.state.metrics.get("train_s", 0.0)),
                               ema=_averaged(m) if m.ema is not None else None)
        if ctx.is_main:
            record: dict[str, Any] = {"phase": m.phase, "event": "resumed" if m.found else "trained", "steps": m.state.step,
                      "train_s": results[i].seconds, "session_s": round(time.perf_counter() - m.started, 3)}
            if shared:
                record["together_with"] = [p for p in shared if p != m.phase]
            append_run_record(out_dir, record)
    _leave_rng(members, ctx)
    return [results[i] for i in range(len(members))]


def _leave_rng(members: Sequence[_Member], ctx: DistContext) -> None:
    """The global generators end where the last student's stand, as after training it alone."""
    last = members[-1]
    torch.set_rng_state(last.rng_cpu)
    if ctx.device.type == "cuda" and last.rng_cuda is not None:
        torch.cuda.set_rng_state(last.rng_cuda, ctx.device)


__all__ = ["Callback", "FitResult", "StepState", "Student", "TrainConfig", "fit", "fit_together", "learning_rate",
           "no_decay_names", "param_groups", "run_identity", "wants_channels_last"]
