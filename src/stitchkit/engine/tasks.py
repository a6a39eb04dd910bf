"""Tasks: what a training phase trains and how one batch's loss is computed.

The engine owns the loop; a task owns the modules and the loss. A method
writes (or reuses) a task instead of copying the loop, so every method gets
the same optimizer, schedule, DDP, checkpoints and logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.interfaces import AncestryAdapter, DistillationLoss, PathSampler, TapRequest, Taps
from ..pool.pool import Pool
from ..core.spec import Path
from ..pool.stitched import Descendant
from .teacher import LogitsTeacher

LossOutput = Union[torch.Tensor, tuple[torch.Tensor, Mapping[str, Any]]]


@dataclass
class Batch:
    """One batch on the training device; ``label_smoothing`` is the run's setting.

    ``targets`` are class indices, or soft targets ``(B, C)`` when the run
    mixes batches (``train.mixup``/``cutmix``; smoothing is then already in
    them and ``label_smoothing`` is 0). ``F.cross_entropy`` takes either.
    """

    images: torch.Tensor
    targets: torch.Tensor
    label_smoothing: float = 0.0

    def __len__(self) -> int:
        return len(self.targets)


class TrainTask(ABC):
    """Base class. Override :meth:`trainable` and :meth:`loss`.

    ``teacher`` is frozen by the engine (eval mode, no grad) and run once per
    step for the taps :meth:`teacher_taps` asks for. With a ``sampler``, the
    engine draws the step's path(s) and calls :meth:`loss` once per path.
    """

    #: An ancestry adapter, or a :class:`~stitchkit.engine.teacher.LogitsTeacher` for logits-only losses.
    teacher: AncestryAdapter | LogitsTeacher | None = None
    sampler: PathSampler | None = None

    @abstractmethod
    def trainable(self) -> nn.Module:
        """Every module the optimizer trains; its state dict is what checkpoints hold."""

    def teacher_taps(self) -> TapRequest:
        return TapRequest()

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        """The classifier validated at the end of an epoch (``None``: no validation)."""
        return None

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, teacher: Taps | None, path: Path | None) -> LossOutput:
        """The scalar loss of ``batch`` (for ``path`` when sampling paths)."""


#: How a soft cross-entropy is reduced: summed over classes and averaged over the batch
#: (Learngene Pool's Eq. 3 as written), or averaged over all elements (its official
#: code, TinyBERT-style: 1/C as large).
REDUCTIONS = ("sum-classes", "mean")


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0, reduction: str = "sum-classes"
) -> torch.Tensor:
    """Cross-entropy of ``softmax(teacher / tau)`` against ``log_softmax(student / tau)``, reduced by ``reduction``."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"soft cross-entropy reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    target = F.softmax(teacher_logits.float() / tau, dim=-1)
    per_element = -(target * F.log_softmax(student_logits.float() / tau, dim=-1))
    return per_element.sum(-1).mean() if reduction == "sum-classes" else per_element.mean()


class ClassificationTask(TrainTask):
    """Train a classifier from scratch: cross-entropy with label smoothing.

    Used for an ancestry or an SN-Net anchor. ``label_smoothing=None`` takes
    the run's ``train.label_smoothing``.
    """

    def __init__(self, model: nn.Module, label_smoothing: float | None = None) -> None:
        self.model, self.label_smoothing = model, label_smoothing

    def trainable(self) -> nn.Module:
        return self.model

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        return model

    def loss(self, model: nn.Module, batch: Batch, teacher: Taps | None, path: Path | None) -> LossOutput:
        ls = batch.label_smoothing if self.label_smoothing is None else self.label_smoothing
        return F.cross_entropy(model(batch.images).float(), batch.targets, label_smoothing=ls)


class DistillationTask(TrainTask):
    """Distil ``student`` from a frozen ``teacher`` (an auxiliary model from the ancestry).

    Loss: ``alpha * CE(student, labels) + (1 - alpha) * loss(student taps, teacher taps)``.
    The distillation ``loss`` is trained jointly with the student (its
    transformation matrices ``W`` and ``M``), so both are in :meth:`trainable`.
    """

    def __init__(self, student: AncestryAdapter, teacher: AncestryAdapter, loss: DistillationLoss, alpha: float = 0.5) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.student, self.teacher, self.distill, self.alpha = student, teacher, loss, alpha
        self._modules = nn.ModuleDict({"student": student.model, "loss": loss})

    def trainable(self) -> nn.Module:
        return self._modules

    def teacher_taps(self) -> TapRequest:
        return self.distill.teacher_taps()

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        """The student in ``model`` (the trained one, or a copy of it such as its moving average)."""
        return model["student"] if isinstance(model, nn.ModuleDict) else self.student.model

    def loss(self, model: nn.Module, batch: Batch, teacher: Taps | None, path: Path | None) -> LossOutput:
        assert teacher is not None
        taps = self.student.forward_taps(batch.images, self.distill.student_taps())
        ce = F.cross_entropy(taps.logits.float(), batch.targets, label_smoothing=batch.label_smoothing)
        dis = self.distill(taps, teacher)
        return self.alpha * ce + (1 - self.alpha) * dis, {"ce": ce.detach(), "distill": dis.detach()}


DISTILLATION = ("none", "soft", "hard")


class PoolTask(TrainTask):
    """Fine-tune a pool: every step trains the descendant(s) of the sampled path(s).

    ``distillation`` from the frozen ``teacher``'s logits: ``"none"`` (CE only),
    ``"soft"`` (Learngene Pool: ``CE + softCE(teacher / tau, student / tau)``, reduced by
    ``reduction``, see :data:`REDUCTIONS`) or
    ``"hard"`` (DeiT / SN-Net: ``(CE(labels) + CE(teacher argmax)) / 2``).
    """

    def __init__(
        self,
        pool: Pool,
        sampler: PathSampler,
        teacher: AncestryAdapter | LogitsTeacher | None = None,
        distillation: str = "none",
        tau: float = 1.0,
        reduction: str = "sum-classes",
    ) -> None:
        if distillation not in DISTILLATION:
            raise ConfigError(f"pool distillation must be one of {', '.join(DISTILLATION)}, got {distillation!r}")
        if distillation != "none" and teacher is None:
            raise ConfigError(f"pool distillation {distillation!r} needs a teacher (the ancestry)")
        if tau <= 0:
            raise ConfigError(f"distillation temperature tau must be positive, got {tau}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"pool distillation reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.pool, self.sampler, self.distillation, self.tau = pool, sampler, distillation, tau
        self.reduction = reduction
        self.teacher = teacher if distillation != "none" else None
        # Every sampled path's descendant built up front (they share the pool's parameters): the cache
        # never changes while training, so a compiled step (train.compile) keeps its guards.
        self._descendants: dict[str, Descendant] = {p.name: pool.descendant(p) for p in sampler.paths}

    def trainable(self) -> nn.Module:
        return self.pool

    def eval_model(self, model: nn.Module) -> nn.Module | None:
        """The pool's largest descendant (most MACs if the sampler knows them, else the last path)."""
        if self.sampler is None:
            return None
        paths = self.sampler.paths
        macs = self.sampler.macs
        path = paths[max(range(len(paths)), key=lambda i: (macs[i], i))] if macs else paths[-1]
        return self.descendant(model, path)

    def descendant(self, model: nn.Module, path: Path) -> Descendant:
        """The descendant of ``path`` sharing ``model``'s (the pool's) parameters, cached for the trained pool."""
        if model is not self.pool:  # a copy of the pool (its moving average): not cached
            return model.descendant(path)  # type: ignore[operator,no-any-return]
        d = self._descendants.get(path.name)
        if d is None:
            d = self._descendants[path.name] = model.descendant(path)  # type: ignore[operator]
        return d

    def loss(self, model: nn.Module, batch: Batch, teacher: Taps | None, path: Path | None) -> LossOutput:
        assert path is not None
        logits = self.descendant(model, path)(batch.images).float()
        ce = F.cross_entropy(logits, batch.targets, label_smoothing=batch.label_smoothing)
        if self.distillation == "none":
            return ce
        assert teacher is not None
        if self.distillation == "soft":
            dis = soft_cross_entropy(logits, teacher.logits, self.tau, self.reduction)
            return ce + dis, {"ce": ce.detach(), "distill": dis.detach()}
        dis = F.cross_entropy(logits, teacher.logits.argmax(-1))
        return (ce + dis) / 2, {"ce": ce.detach(), "distill": dis.detach()}
