"""Distilling one auxiliary model from the frozen ancestry, on the engine.

The task is the engine's :class:`DistillationTask` (``alpha * CE + (1 - alpha)
* L_dis``, student and loss trained jointly) with each distillation term
logged on its own, so a run shows ``L_att``, ``L_blk`` and ``L_pred`` falling.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stitchkit.engine.tasks import Batch, DistillationTask
from stitchkit.core.interfaces import AncestryAdapter, DistillationLoss, Taps
from stitchkit.core.spec import Path

from .losses import LearngeneDistillation, learngene_objective


class AuxiliaryDistillationTask(DistillationTask):
    """``L = alpha * L_cls + (1 - alpha) * L_dis`` (by default ``L_att + L_blk + L_pred``), logging every term."""

    def __init__(self, student: AncestryAdapter, teacher: AncestryAdapter, loss: DistillationLoss, alpha: float = 0.5) -> None:
        super().__init__(student, teacher, loss, alpha)

    def loss(self, model: nn.Module, batch: Batch, teacher: Taps | None, path: Path | None) -> Any:
        assert teacher is not None
        taps = self.student.forward_taps(batch.images, self.distill.student_taps())
        ce = F.cross_entropy(taps.logits.float(), batch.targets, label_smoothing=batch.label_smoothing)
        distill = self.distill
        # a combined loss (``learngene``) reports its terms; any other registered loss is one term
        parts = (distill.parts(taps, teacher) if isinstance(distill, LearngeneDistillation)
                 else {distill.name: distill(taps, teacher)})
        dis = torch.stack(list(parts.values())).sum()
        logged = {"ce": ce.detach(), "distill": dis.detach(), **{k: v.detach() for k, v in parts.items()}}
        return learngene_objective(ce, dis, self.alpha), logged
