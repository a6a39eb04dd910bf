"""The paper's distillation losses, each usable on its own.

``L_dis = L_att + L_blk + L_pred`` (TinyBERT-style layer distillation):

- :class:`PredictionLoss` -- soft cross-entropy between the ancestry's and the
  auxiliary's logits, both divided by ``tau``;
- :class:`BlockLoss` -- ``MSE(B_anc @ W, B_aux)`` on block output tokens;
- :class:`AttentionLoss` -- ``MSE(A_anc @ M, A_aux)`` on the attention-sublayer
  output (after the output projection, before the residual add).

``W`` and ``M`` (``d x d'``) are learnable and trained jointly with the
auxiliary model, one per compared level; when the widths match they are the
identity and hold no parameter. The learned ``W`` initialise the stitch
layers later (the ``tm`` initializer), so they are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from stitchkit.errors import ConfigError
from stitchkit.interfaces import DistillationLoss, TapRequest, Taps
from stitchkit.spec import RowShape

from .levels import default_levels, level_pairs


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``mean_b( -sum_c softmax(t/tau) * log_softmax(s/tau) )``."""
    target = F.softmax(teacher_logits / tau, dim=-1)
    return -(target * F.log_softmax(student_logits / tau, dim=-1)).sum(-1).mean()


class PredictionLoss(DistillationLoss):
    """Prediction-layer distillation: soft cross-entropy of logits / tau (tau = 1 in the paper)."""

    name = "prediction"

    def __init__(self, tau: float = 1.0) -> None:
        super().__init__()
        if not tau > 0:
            raise ConfigError(f"prediction distillation temperature tau must be > 0, got {tau}")
        self.tau = float(tau)

    @override
    def teacher_taps(self) -> TapRequest:
        return TapRequest()

    @override
    def student_taps(self) -> TapRequest:
        return TapRequest()

    @override
    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:  # type: ignore[override]
        return soft_cross_entropy(student.logits, teacher.logits.detach(), self.tau)


class _TransformedMSE(DistillationLoss):
    """MSE between teacher features mapped by a per-level ``d x d'`` matrix and student features."""

    tap: str  # "blocks" or "attentions"

    def __init__(self, ancestry_width: int, auxiliary_width: int, pairs: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError(f"{self.name} distillation needs at least one (ancestry block, auxiliary block) pair")
        self.ancestry_width, self.auxiliary_width = int(ancestry_width), int(auxiliary_width)
        self.pairs = [(int(t), int(s)) for t, s in pairs]
        #: Identity when the widths match: nothing to learn, no parameter.
        self.learned = self.ancestry_width != self.auxiliary_width
        self.matrices = nn.ParameterList(
            [nn.Parameter(_linear_like_init(self.ancestry_width, self.auxiliary_width)) for _ in self.pairs]
            if self.learned
            else []
        )

    @classmethod
    @override
    def example(cls, *, teacher: RowShape, student: RowShape, **context) -> _TransformedMSE:  # noqa: ANN003
        """The loss between networks of these shapes, on the paper's default levels."""
        return cls.for_models(teacher, student)

    @classmethod
    @override
    def for_models(cls, ancestry: RowShape, auxiliary: RowShape, levels: int | str | None = None) -> _TransformedMSE:
        """The loss between two networks of these shapes, on ``levels`` (default: the paper's ablation)."""
        levels = levels if levels is not None else default_levels(ancestry, auxiliary)
        return cls(ancestry.width, auxiliary.width, level_pairs(ancestry.depth, auxiliary.depth, levels))

    def matrix(self, level: int) -> torch.Tensor | None:
        """The ``d x d'`` matrix of ``level``, or ``None`` for the identity."""
        return self.matrices[level] if self.learned else None

    @override
    def teacher_taps(self) -> TapRequest:
        return TapRequest(**{self.tap: tuple(sorted({t for t, _ in self.pairs}))})

    @override
    def student_taps(self) -> TapRequest:
        return TapRequest(**{self.tap: tuple(sorted({s for _, s in self.pairs}))})

    @override
    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:  # type: ignore[override]
        s_table, t_table = getattr(student, self.tap), getattr(teacher, self.tap)
        total = torch.zeros(())
        for level, (t, s) in enumerate(self.pairs):
            target = t_table[t].detach()
            if self.learned:
                target = target @ self.matrices[level]
            total = total + F.mse_loss(target, s_table[s])
        return total


class BlockLoss(_TransformedMSE):
    """Block distillation ``MSE(B_anc @ W, B_aux)``; ``W`` is the block-based transformation matrix."""

    name = "block"
    tap = "blocks"


class AttentionLoss(_TransformedMSE):
    """Attention distillation ``MSE(A_anc @ M, A_aux)``; ``M`` is the attention-based transformation matrix."""

    name = "attention"
    tap = "attentions"


def _linear_like_init(d: int, d_prime: int) -> torch.Tensor:
    """``nn.Linear(d, d')``'s default init, as a ``d x d'`` matrix (the official code uses a Linear)."""
    weight = torch.empty(d_prime, d)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight.t().contiguous()


class LearngeneDistillation(DistillationLoss):
    """``L_dis = L_att + L_blk + L_pred`` between the ancestry and one auxiliary model.

    ``terms`` picks which of the three are used (all by default). ``parts``
    returns each term separately, for logging and for the tests.
    """

    name = "learngene"
    TERMS = ("attention", "block", "prediction")

    def __init__(
        self,
        ancestry: RowShape,
        auxiliary: RowShape,
        *,
        levels: int | str | None = None,
        tau: float = 1.0,
        terms: Sequence[str] = TERMS,
    ) -> None:
        super().__init__()
        unknown = sorted(set(terms) - set(self.TERMS))
        if unknown or not terms:
            raise ConfigError(
                f"unknown distillation terms {unknown}; choose from {', '.join(self.TERMS)}"
                if unknown
                else "distillation needs at least one term"
            )
        self.levels = levels if levels is not None else default_levels(ancestry, auxiliary)
        parts: dict[str, DistillationLoss] = {}
        if "attention" in terms:
            parts["attention"] = AttentionLoss.for_models(ancestry, auxiliary, self.levels)
        if "block" in terms:
            parts["block"] = BlockLoss.for_models(ancestry, auxiliary, self.levels)
        if "prediction" in terms:
            parts["prediction"] = PredictionLoss(tau)
        # an nn.ModuleDict (so the terms' parameters are the loss's), read as the mapping it is
        self.losses: Mapping[str, DistillationLoss] = nn.ModuleDict(parts)  # type: ignore[assignment]

    @classmethod
    @override
    def for_models(
        cls, teacher: RowShape, student: RowShape, *, levels: int | str | None = None, tau: float = 1.0,
        terms: Sequence[str] = TERMS,
    ) -> LearngeneDistillation:
        """The loss between the ancestry (``teacher``) and an auxiliary model (``student``)."""
        return cls(teacher, student, levels=levels, tau=tau, terms=terms)

    @classmethod
    @override
    def example(cls, *, teacher: RowShape, student: RowShape, **context) -> LearngeneDistillation:  # noqa: ANN003
        """All three terms between networks of these shapes."""
        return cls(teacher, student)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        for loss in self.losses.values():
            if isinstance(loss, _TransformedMSE):
                return loss.pairs
        return []

    @override
    def teacher_taps(self) -> TapRequest:
        req = TapRequest()
        for loss in self.losses.values():
            req = req | loss.teacher_taps()
        return req

    @override
    def student_taps(self) -> TapRequest:
        req = TapRequest()
        for loss in self.losses.values():
            req = req | loss.student_taps()
        return req

    def parts(self, student: Taps, teacher: Taps) -> dict[str, torch.Tensor]:
        return {name: loss(student, teacher) for name, loss in self.losses.items()}

    @override
    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:  # type: ignore[override]
        return sum(self.parts(student, teacher).values())  # type: ignore[return-value]

    def block_matrices(self) -> list[torch.Tensor]:
        """The learned ``W`` of each level (empty when the widths match or block loss is off)."""
        loss = self.losses["block"] if "block" in self.losses else None
        return list(loss.matrices) if isinstance(loss, _TransformedMSE) else []

    def attention_matrices(self) -> list[torch.Tensor]:
        loss = self.losses["attention"] if "attention" in self.losses else None
        return list(loss.matrices) if isinstance(loss, _TransformedMSE) else []


def learngene_objective(label_loss: torch.Tensor, distillation: torch.Tensor, alpha: float) -> torch.Tensor:
    """``L = alpha * L_cls + (1 - alpha) * L_dis``."""
    return alpha * label_loss + (1.0 - alpha) * distillation
