"""What the training loop tells observers: a callback class with one method per moment of a phase.

A subclass overrides the moments it cares about; the others do nothing. The
loop passes a :class:`StepState`; its ``loss`` stays a tensor on the training
device, so a callback that does not read it costs no host synchronisation
(``float(st.loss)`` pays it where it is wanted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class StepState:
    """What callbacks see. ``model`` is the task's trainable module; ``phase`` names the run it belongs to."""

    step: int
    epoch: int
    batch: int
    #: The step's loss, detached, on the training device (NaN outside a step).
    loss: torch.Tensor
    paths: list[str]
    rank: int
    world_size: int
    model: nn.Module
    metrics: dict[str, Any] = field(default_factory=dict)
    phase: str = ""


class Callback:
    """Observer of one phase of :func:`stitchkit.engine.trainer.fit`; every method is a no-op by default."""

    def after_backward(self, state: StepState) -> None:
        """Gradients are in ``.grad``; the optimizer has not stepped yet (clipping not applied)."""

    def step_end(self, state: StepState) -> None:
        """The optimizer stepped; ``state.step`` counts the steps done, ``state.metrics`` the last log line."""

    def epoch_end(self, state: StepState) -> None:
        """An epoch (or the run's last, partial one) ended, was evaluated and checkpointed."""

    def fit_end(self, state: StepState) -> None:
        """The phase is over (the teacher is still frozen)."""


__all__ = ["Callback", "StepState"]
