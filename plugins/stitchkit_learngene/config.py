"""The ``[learngene]`` section of a build config.

Training hyper-parameters come from the engine's ``[train]`` section; the
distillation and fine-tuning phases override any of its keys in
``[learngene.distill]`` and ``[learngene.finetune]`` (the paper: 100 and 50
epochs, both with lr 5e-4, batch 128, AdamW, cosine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from stitchkit.core.errors import ConfigError
from stitchkit.io.files import is_plain_file_name
from stitchkit.core.spec import parse_rows

from .designs import INITS
from .levels import resolve_levels
from .losses import REDUCTIONS, LearngeneDistillation
from .method import PATH_SETS


@dataclass
class LearngeneConfig:
    """Everything Learngene Pool adds to the engine's sections."""

    #: A model file saved by ``stitchkit train-ancestry`` / ``train_model`` to use as the ancestry. Empty: the
    #: ``[model]`` section's network, loaded when it names weights (``pretrained`` or ``checkpoint``),
    #: otherwise trained on the data first (phase ``ancestry``, ``[train]`` with ``ancestry_train`` overrides).
    ancestry: str = ""
    #: ``[train]`` keys overridden while training the ancestry (when it is trained here).
    ancestry_train: dict[str, Any] = field(default_factory=dict)
    #: Auxiliary design by registered name (``pool``: one auxiliary model per entry of ``rows``).
    design: str = "pool"
    #: Options of the design (keyword arguments of its constructor); ``rows`` and ``init`` below are
    #: passed too when the design takes them and this table does not set them.
    design_args: dict[str, Any] = field(default_factory=dict)
    #: Auxiliary models, one per row, ``DEPTHxWIDTH:HEADS`` comma-separated; sorted by width.
    rows: str = "6x192:3,6x768:12"
    #: ``"sequential"`` (k narrow blocks, then l - k wide ones), ``"sliding-window"`` (official code) or
    #: ``"two-way"`` (two rows, SN-Netv2's routes in both directions; docs/snnetv2.md).
    paths: str = "sequential"
    #: Also stitch each row to every wider row beyond the next, so paths may skip rows (sequential and
    #: sliding-window paths; the authors' tiny -> base with a small row present).
    skip_rows: bool = False
    #: Auxiliary initialisation: ``"random"``, or ``"ancestry"`` (same-width rows copy ancestry blocks).
    init: str = "random"
    #: Distillation levels per row: ``"auto"`` (dense for narrower rows, last block for same width),
    #: ``"dense"``, ``"last"`` or a number of levels.
    levels: str | int = "auto"
    #: Weight of the label loss: ``L = alpha * L_cls + (1 - alpha) * (L_att + L_blk + L_pred)``.
    alpha: float = 0.5
    #: Temperature of prediction distillation (and of fine-tuning distillation).
    tau: float = 1.0
    #: How L_pred (distillation and fine-tuning) is reduced: ``"sum-classes"`` (summed over classes,
    #: batch mean: the paper's Eq. 3 as written) or ``"mean"`` (over all elements: the official code, 1/C as large).
    prediction_reduction: str = "sum-classes"
    #: Distillation terms used.
    terms: list[str] = field(default_factory=lambda: list(LearngeneDistillation.TERMS))
    #: Distillation loss by registered name (``learngene``: ``L_att + L_blk + L_pred``; or one of its terms).
    loss: str = "learngene"
    #: Options of the loss (keyword arguments of its ``for_models``); ``levels``, ``tau`` and ``terms``
    #: above are passed too when the loss takes them and this table does not set them.
    loss_args: dict[str, Any] = field(default_factory=dict)
    #: Stitch initializer by registered name (``tm``, ``tm-pinv``, ``ls``, ``random``, ...).
    initializer: str = "tm"
    #: Options of the initializer (keyword arguments of its constructor), e.g. ``{ ridge = 0.05 }`` for ``tm-ls``.
    initializer_args: dict[str, Any] = field(default_factory=dict)
    #: Training images handed to an initializer that needs them (LS; SN-Net uses 100).
    init_images: int = 100
    #: Also evaluate every descendant right after each of these initializers (before fine-tuning);
    #: results go to the pool's ``info["learngene"]["after_init"]``.
    compare_initializers: list[str] = field(default_factory=list)
    #: Path sampler for fine-tuning, by registered name.
    sampler: str = "uniform"
    #: Options of the sampler (keyword arguments after the paths and MACs), e.g. ``{ groups = 4 }``.
    sampler_args: dict[str, Any] = field(default_factory=dict)
    #: Rank of low-rank stitch layers (0: full-rank; see docs/snnetv2.md).
    stitch_rank: int = 0
    #: Scale numerator of the low-rank update (scale = stitch_alpha / stitch_rank).
    stitch_alpha: float = 1.0
    #: Prediction distillation from the ancestry while fine-tuning (``L_cls + L_pred``); false: ``L_cls`` only.
    finetune_distillation: bool = True
    #: Evaluation split for the stored top-1: ``"test"`` or ``"val"``.
    eval_split: str = "test"
    #: Pool file name inside the output directory.
    pool_file: str = "pool.safetensors"
    #: Distil every row in one run, the ancestry's forward computed once per batch for all of them (and, in a
    #: build of several pools, fine-tune them in one run the same way); all of them are in memory at once.
    #: false: one at a time. The weights are the same either way.
    together: bool = True
    #: ``[train]`` keys overridden while distilling the auxiliary models.
    distill: dict[str, Any] = field(default_factory=dict)
    #: ``[train]`` keys overridden while fine-tuning the pool.
    finetune: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "learngene") -> None:
        try:
            parse_rows(self.rows)
        except ConfigError as exc:
            raise ConfigError(f"{where}.rows: {exc}") from None
        checks = [
            (self.paths in PATH_SETS, f"paths must be one of {', '.join(PATH_SETS)}, got {self.paths!r}"),
            (not (self.skip_rows and self.paths == "two-way"), "skip_rows needs paths 'sequential' or 'sliding-window' (two-way routes join two rows)"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}, got {self.init!r}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.tau > 0, f"tau must be > 0, got {self.tau}"),
            (self.prediction_reduction in REDUCTIONS,
             f"prediction_reduction must be one of {', '.join(REDUCTIONS)}, got {self.prediction_reduction!r}"),
            (bool(self.terms) and set(self.terms) <= set(LearngeneDistillation.TERMS),
             f"terms must be a non-empty subset of {list(LearngeneDistillation.TERMS)}, got {self.terms}"),
            (self.init_images >= 1, f"init_images must be >= 1, got {self.init_images}"),
            (self.stitch_rank >= 0, f"stitch_rank must be >= 0 (0: full-rank stitch layers), got {self.stitch_rank}"),
            (self.stitch_alpha > 0, f"stitch_alpha must be > 0, got {self.stitch_alpha}"),
            (self.eval_split in ("test", "val"), f"eval_split must be 'test' or 'val', got {self.eval_split!r}"),
            (is_plain_file_name(self.pool_file), f"pool_file must be a plain file name (no '/', not '.' or '..'), got {self.pool_file!r}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ConfigError(f"{where}.{problem}")
        if self.levels != "auto":
            try:
                resolve_levels(self.levels)
            except ConfigError as exc:
                raise ConfigError(f"{where}.levels: {exc}") from None

    def train_config(self, base: Any, phase: str) -> Any:
        """The engine's ``TrainConfig`` for ``phase`` (``"ancestry"``, ``"distill"`` or ``"finetune"``)."""
        from stitchkit.engine.config import check_keys

        overrides = {"distill": self.distill, "finetune": self.finetune, "ancestry": self.ancestry_train}[phase]
        fields = [f.name for f in dataclasses.fields(base) if f.init]
        where = "learngene.ancestry_train" if phase == "ancestry" else f"learngene.{phase}"
        check_keys(overrides, fields, where)
        from stitchkit.engine.config import from_mapping

        return from_mapping(type(base), {**_as_dict(base), **overrides}, f"train (with {where})")


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
