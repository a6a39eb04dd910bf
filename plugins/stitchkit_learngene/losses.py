"""The paper's distillation losses, each usable on its own.

``L_dis = L_att + L_blk + L_pred`` (the paper's Eqs. 3-5):

- :class:`PredictionLoss` -- soft cross-entropy between the ancestry's and the
  auxiliary's logits, both divided by ``tau``, summed over classes (Eq. 3) or
  averaged over all elements (the official code; ``reduction = "mean"``);
- :class:`BlockLoss` -- ``MSE(B_anc @ W, B_aux)`` on block output tokens (on the
  channels of every pixel for CNN feature maps, ``layout="map"``);
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

from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import DistillationLoss, TapRequest, Taps
from stitchkit.core.spec import LAYOUTS, RowShape

from .levels import default_levels, level_pairs, resolve_levels


#: L_pred reductions (the same names as the engine's ``stitchkit.engine.tasks.REDUCTIONS``).
REDUCTIONS = ("sum-classes", "mean")


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0, reduction: str = "sum-classes"
) -> torch.Tensor:
    """``"sum-classes"``: ``mean_b( -sum_c softmax(t/tau) * log_softmax(s/tau) )`` (the paper's Eq. 3);
    ``"mean"``: the same terms averaged over batch and classes (the official code), 1/C as large."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"prediction loss reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    target = F.softmax(teacher_logits / tau, dim=-1)
    per_element = -(target * F.log_softmax(student_logits / tau, dim=-1))
    return per_element.sum(-1).mean() if reduction == "sum-classes" else per_element.mean()


class PredictionLoss(DistillationLoss):
    """Prediction-layer distillation: soft cross-entropy of logits / tau (tau = 1 in the paper).

    ``reduction``: ``"sum-classes"`` (Eq. 3 as written, default) or ``"mean"``
    (the official code's average over all elements).
    """

    name = "prediction"

    def __init__(self, tau: float = 1.0, reduction: str = "sum-classes") -> None:
        super().__init__()
        if not tau > 0:
            raise ConfigError(f"prediction distillation temperature tau must be > 0, got {tau}")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"prediction loss reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.tau = float(tau)
        self.reduction = reduction

    @override
    def teacher_taps(self) -> TapRequest:
        return TapRequest()

    @override
    def student_taps(self) -> TapRequest:
        return TapRequest()

    @override
    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:  # type: ignore[override]
        return soft_cross_entropy(student.logits, teacher.logits.detach(), self.tau, self.reduction)


class _TransformedMSE(DistillationLoss):
    """MSE between teacher features mapped by a per-level ``d x d'`` matrix and student features."""

    tap: str  # "blocks" or "attentions"

    def __init__(
        self,
        ancestry_width: int,
        auxiliary_width: int,
        pairs: Sequence[Sequence[int]],
        *,
        level_widths: Sequence[Sequence[int]] | None = None,
        layout: str = "tokens",
    ) -> None:
        super().__init__()
        if not pairs:
            raise ConfigError(f"{self.name} distillation needs at least one (ancestry block, auxiliary block) pair")
        if layout not in LAYOUTS:
            raise ConfigError(f"{self.name} distillation: layout must be one of {', '.join(LAYOUTS)} (the ancestry "
                              f"adapter's feature_layout), got {layout!r}")
        self.ancestry_width, self.auxiliary_width = int(ancestry_width), int(auxiliary_width)
        self.pairs = [(int(t), int(s)) for t, s in pairs]
        #: ``(d, d')`` per level: the channels of the compared blocks (stage widths in hierarchical families).
        self.level_widths = [(int(a), int(b)) for a, b in (level_widths or [(ancestry_width, auxiliary_width)] * len(self.pairs))]
        #: ``map``: features are ``(B, C, H, W)`` and ``W`` acts on the channels of every pixel.
        self.layout = layout
        equal = [a == b for a, b in self.level_widths]
        if any(equal) and not all(equal):
            raise ConfigError(
                f"{self.name} distillation: the auxiliary is as wide as the ancestry at some compared levels and "
                f"narrower at others ({self.level_widths}); reduce the width of every stage, or of none"
            )
        #: Identity when the widths match: nothing to learn, no parameter.
        self.learned = not all(equal)
        self.matrices = nn.ParameterList(
            [nn.Parameter(_linear_like_init(a, b)) for a, b in self.level_widths] if self.learned else []
        )

    @classmethod
    @override
    def example(cls, *, teacher: RowShape, student: RowShape, **context) -> _TransformedMSE:  # noqa: ANN003
        """The loss between networks of these shapes, on the paper's default levels, on features of
        ``context["layout"]`` (default ``tokens``)."""
        return cls.for_models(teacher, student, layout=context.get("layout", "tokens"))

    @classmethod
    @override
    def for_models(
        cls, ancestry: RowShape, auxiliary: RowShape, levels: int | str | None = None, *, layout: str = "tokens"
    ) -> _TransformedMSE:
        """The loss between two networks of these shapes, on ``levels`` (default: the paper's ablation).

        Hierarchical shapes compare each level at the widths of its two blocks' stages; ``layout``
        is the ancestry adapter's ``feature_layout``."""
        levels = levels if levels is not None else default_levels(ancestry, auxiliary)
        n_stages = len(ancestry.stage_shapes)
        if ancestry.stages and len(auxiliary.stage_shapes) == n_stages and resolve_levels(levels) == n_stages:
            # hierarchical families: one level per stage, at the last block of each (same resolution on both sides)
            pairs = [(a + d - 1, b + e - 1) for a, (d, _, _), b, (e, _, _) in zip(
                ancestry.stage_starts, ancestry.stage_shapes, auxiliary.stage_starts, auxiliary.stage_shapes)]
        else:
            pairs = level_pairs(ancestry.depth, auxiliary.depth, levels)
        widths = [(ancestry.width_at(t + 1), auxiliary.width_at(s + 1)) for t, s in pairs]
        return cls(ancestry.width, auxiliary.width, pairs, level_widths=widths, layout=layout)

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
            target, student_feats = t_table[t].detach(), s_table[s]
            if self.layout == "map":  # W acts on the channels of every pixel
                target, student_feats = target.movedim(1, -1), student_feats.movedim(1, -1)
            if self.learned:
                target = target @ self.matrices[level]
            if target.shape != student_feats.shape:
                raise ConfigError(
                    f"{self.name} distillation level {level}: ancestry block {t} gives {tuple(target.shape)} after W, "
                    f"auxiliary block {s} gives {tuple(student_feats.shape)}; compare blocks at the same resolution "
                    f"(give the auxiliary the ancestry's stage structure, or other levels)"
                )
            total = total + F.mse_loss(target, student_feats)
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
        layout: str = "tokens",
        reduction: str = "sum-classes",
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
            if not ancestry.heads or not auxiliary.heads:
                raise ConfigError(
                    f"the attention-level distillation loss needs attention, and the "
                    f"{'ancestry ' + str(ancestry) if not ancestry.heads else 'auxiliary ' + str(auxiliary)} has none "
                    f"(a CNN); leave 'attention' out of learngene.terms, e.g. terms = [\"block\", \"prediction\"]"
                )
            parts["attention"] = AttentionLoss.for_models(ancestry, auxiliary, self.levels, layout=layout)
        if "block" in terms:
            parts["block"] = BlockLoss.for_models(ancestry, auxiliary, self.levels, layout=layout)
        if "prediction" in terms:
            parts["prediction"] = PredictionLoss(tau, reduction)
        # an nn.ModuleDict (so the terms' parameters are the loss's), read as the mapping it is
        self.losses: Mapping[str, DistillationLoss] = nn.ModuleDict(parts)  # type: ignore[assignment]

    @classmethod
    @override
    def for_models(
        cls, teacher: RowShape, student: RowShape, *, levels: int | str | None = None, tau: float = 1.0,
        terms: Sequence[str] = TERMS, layout: str = "tokens", reduction: str = "sum-classes",
    ) -> LearngeneDistillation:
        """The loss between the ancestry (``teacher``) and an auxiliary model (``student``); ``layout``:
        the ancestry adapter's ``feature_layout`` (``map``: block features are CNN maps, W acts on channels)."""
        return cls(teacher, student, levels=levels, tau=tau, terms=terms, layout=layout, reduction=reduction)

    @classmethod
    @override
    def example(cls, *, teacher: RowShape, student: RowShape, **context) -> LearngeneDistillation:  # noqa: ANN003
        """All three terms between networks of these shapes (no attention term between networks without
        attention), on features of ``context["layout"]`` (default ``tokens``)."""
        terms = cls.TERMS if teacher.heads and student.heads else tuple(t for t in cls.TERMS if t != "attention")
        return cls(teacher, student, terms=terms, layout=context.get("layout", "tokens"))

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
