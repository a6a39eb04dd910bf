"""The plan a method gives of a build: its phases and their recipes, and the counting conventions.

Methods (plugins) return a :class:`TrainingPlan` from
:meth:`stitchkit.core.interfaces.Method.training_phases`; :mod:`stitchkit.apps.cost` turns it
into images seen and FLOPs. The dataclasses live in the core so a method depends on the contract,
not on the presentation module that prices it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

FLOPS_PER_MAC = 2
#: Forward passes a trained network costs per image (forward + backward = 3 forwards).
TRAINED_PASSES = 3
#: Forward passes a frozen network (a teacher) costs per image.
FROZEN_PASSES = 1
#: Kinds of phase: run by the build, run elsewhere before it (loaded weights), or forward-only evaluation.
KINDS = ("build", "pretraining", "evaluation")
#: DeiT's recipe length, the default price of a network whose weights were loaded.
DEFAULT_PRETRAIN_EPOCHS = 300


@dataclass(frozen=True)
class Phase:
    """One phase of a build: a recipe and the per-image forward MACs of what it trains and runs."""

    name: str
    #: What is trained / run, in words (shown in the table).
    what: str
    epochs: int = 0
    batch_size: int = 1
    max_steps: int = 0
    #: Forward MACs per image of the networks whose weights this phase trains (mean over sampled paths).
    trained_macs: float = 0.0
    #: Forward MACs per image of networks run without training (teachers, feature collection).
    frozen_macs: float = 0.0
    #: A fixed number of images (forward-only phases: a stitch initializer's batch, an evaluation);
    #: ``None``: ``epochs`` over the training set.
    images: int | None = None
    kind: str = "build"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"phase {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.images is None and (self.epochs < 0 or self.batch_size < 1 or self.max_steps < 0):
            raise ConfigError(f"phase {self.name!r}: epochs and max_steps must be >= 0 and batch_size >= 1")

    def images_seen(self, train_images: int) -> int:
        """Images through the networks in this phase, for a training set of ``train_images``."""
        if self.images is not None:
            return int(self.images)
        steps = self.epochs * (train_images // self.batch_size)
        if self.max_steps:
            steps = min(steps, self.max_steps)
        return steps * self.batch_size

    def flops_per_image(self) -> float:
        return FLOPS_PER_MAC * (TRAINED_PASSES * self.trained_macs + FROZEN_PASSES * self.frozen_macs)


@dataclass
class TrainingPlan:
    """What a method says about a build config: its phases, and the cost of each descendant trained alone.

    ``alone`` holds one phase per descendant: the same architecture trained on
    its own with the method's single-network recipe (``stitchkit cost --alone``);
    ``shared`` names the phases both routes need (an ancestry a pool and the
    alone-trained descendants both distil from), counted once on each side.
    """

    phases: list[Phase]
    alone: list[Phase] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
