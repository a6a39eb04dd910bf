"""The ``[snnet]`` section of a build config.

Data and the base hyper-parameters come from the engine's ``[data]`` and
``[train]`` sections; ``[snnet.anchor_training]`` and ``[snnet.finetune]``
override any ``[train]`` key for training anchors here and for fine-tuning
the stitched network (SN-Net: 50 epochs, lr 5e-5, AdamW).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stitchkit.engine.model import ModelConfig
from stitchkit.core.errors import ConfigError
from stitchkit.io.files import is_plain_file_name
from stitchkit.core.spec import parse_rows

TRAINABLE = ("all", "stitches")
DISTILLATION = ("hard", "soft", "none")


@dataclass
class AnchorConfig(ModelConfig):
    """One ``[[snnet.anchors]]`` entry: which network, and how to get its weights.

    The engine's ``[model]`` keys (a model of any family by ``timm_name``, its
    adapter chosen by the plugins' ``ancestry_for_model`` hook unless ``adapter``
    names one, where ``pretrained = true`` downloads timm's weights; any family by
    ``adapter`` and ``arch``; or a ViT shape by ``depth``, ``embed_dim``,
    ``num_heads``, ``patch_size``, ``mlp_ratio``; a local ``checkpoint`` file
    loads weights), plus ``shape =
    "DEPTHxWIDTH:HEADS"`` as a shorthand and ``train = true`` to train it on
    ``[data]`` first (from its loaded weights if any, else from scratch).
    """

    shape: str = ""
    train: bool = False

    def validate(self, where: str = "snnet.anchors") -> None:
        if self.shape:
            if self.timm_name:
                raise ConfigError(f"{where}: give timm_name or shape, not both")
            try:
                (row,) = parse_rows(self.shape)
            except ValueError:
                raise ConfigError(f"{where}.shape: expected one DEPTHxWIDTH:HEADS, got {self.shape!r}") from None
            if row.stages or not row.heads or self.adapter not in ("auto", "timm-vit"):
                raise ConfigError(
                    f"{where}.shape is a ViT shorthand (DEPTHxWIDTH:HEADS); give another family by adapter and arch "
                    f"(e.g. adapter = \"timm-resnet\", arch = {{block = \"basic\", layers = [2, 2, 2, 2], channels = [8, 16, 32, 64]}})"
                )
            self.depth, self.embed_dim, self.num_heads = row.depth, row.width, row.heads
        if self.pretrained and not self.timm_name:
            raise ConfigError(f"{where}.pretrained needs {where}.timm_name (whose timm weights to download)")
        if not (self.pretrained or self.checkpoint or self.train):
            raise ConfigError(
                f"{where}: say how to get the anchor's weights: pretrained = true (timm), "
                f"checkpoint = \"FILE\", or train = true (train it on [data] here)"
            )
        super().validate(where)  # the [model] checks: sizes within stitchkit.core.limits, heads dividing the width

    def model_section(self) -> dict[str, Any]:
        """The engine's ``[model]`` table for this anchor."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


@dataclass
class SNNetConfig:
    """Everything SN-Net adds to the engine's sections."""

    #: The anchors, smallest first (``[[snnet.anchors]]`` tables, see :class:`AnchorConfig`).
    anchors: list[dict[str, Any]] = field(default_factory=list)
    #: Paired stitching's sliding window over block ids (official ``--stitch_kernel_size``, ``--stitch_stride``).
    kernel_size: int = 2
    stride: int = 1
    #: ``true``: stitch each anchor to the next one only; ``false``: also non-neighbouring
    #: pairs (Ti->B) and three-anchor chains (Ti->S->B), as the official ``nearest_stitching``.
    nearest_stitching: bool = True
    #: Stitch initializer by registered name (``ls`` as SN-Net, ``random``, ...).
    initializer: str = "ls"
    #: Options of the initializer (keyword arguments of its constructor), e.g. ``{ max_images = 50 }`` for ``ls``.
    initializer_args: dict[str, Any] = field(default_factory=dict)
    #: Training images handed to an initializer that needs them (SN-Net: 100).
    init_images: int = 100
    #: Also evaluate every configuration right after initialisation (stored in ``info.snnet.after_init``).
    evaluate_after_init: bool = False
    #: Path sampler for fine-tuning, by registered name (SN-Net: uniform, one configuration per step).
    sampler: str = "uniform"
    #: Options of the sampler (keyword arguments after the paths and MACs), e.g. ``{ groups = 4 }``.
    sampler_args: dict[str, Any] = field(default_factory=dict)
    #: Rank of low-rank stitch layers (0: full-rank, trained whole; see docs/snnetv2.md).
    stitch_rank: int = 0
    #: Scale numerator of the low-rank update (scale = stitch_alpha / stitch_rank).
    stitch_alpha: float = 1.0
    #: ``"all"`` (full fine-tuning, as SN-Net) or ``"stitches"`` (anchors frozen, stitch layers only).
    trainable: str = "all"
    #: Distillation while fine-tuning: ``"hard"`` (SN-Net / DeiT), ``"soft"`` (KL at ``tau``) or ``"none"``.
    distillation: str = "hard"
    tau: float = 1.0
    #: The teacher: ``"largest-anchor"`` (a frozen copy taken before fine-tuning),
    #: ``"timm:NAME"`` (any timm classifier, e.g. ``timm:regnety_160`` as DeiT/SN-Net) or the path
    #: of a stitchkit model file (``stitchkit train``).
    teacher: str = "largest-anchor"
    #: Local weights for a ``timm:NAME`` teacher (safetensors or weights-only .pth) instead of timm's download.
    teacher_checkpoint: str = ""
    #: Evaluation split for the stored accuracy: ``"test"`` or ``"val"``.
    eval_split: str = "test"
    #: Pool file name inside the output directory.
    pool_file: str = "pool.safetensors"
    #: ``[train]`` keys overridden while training anchors (``train = true``).
    anchor_training: dict[str, Any] = field(default_factory=dict)
    #: ``[train]`` keys overridden while fine-tuning the stitched network.
    finetune: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "snnet") -> None:
        if not self.anchors:
            raise ConfigError(f"{where}.anchors: list the anchors smallest first, e.g. [[snnet.anchors]] timm_name = ...")
        checks = [
            (self.init_images >= 1, f"init_images must be >= 1, got {self.init_images}"),
            (self.kernel_size >= 1, f"kernel_size must be >= 1, got {self.kernel_size}"),
            (self.stride >= 1, f"stride must be >= 1, got {self.stride}"),
            (self.stitch_rank >= 0, f"stitch_rank must be >= 0 (0: full-rank stitch layers), got {self.stitch_rank}"),
            (self.stitch_alpha > 0, f"stitch_alpha must be > 0, got {self.stitch_alpha}"),
            (self.trainable in TRAINABLE, f"trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}"),
            (self.distillation in DISTILLATION, f"distillation must be one of {', '.join(DISTILLATION)}, got {self.distillation!r}"),
            (self.tau > 0, f"tau must be > 0, got {self.tau}"),
            (bool(self.teacher), "teacher must be 'largest-anchor', 'timm:NAME' or a model file"),
            (self.eval_split in ("test", "val"), f"eval_split must be 'test' or 'val', got {self.eval_split!r}"),
            (is_plain_file_name(self.pool_file), f"pool_file must be a plain file name (no '/', not '.' or '..'), got {self.pool_file!r}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ConfigError(f"{where}.{problem}")
        if self.teacher_checkpoint and not self.teacher.startswith("timm:"):
            raise ConfigError(f"{where}.teacher_checkpoint applies to a teacher = \"timm:NAME\" only, not to {self.teacher!r}")
        if self.teacher_checkpoint and not pathlib.Path(self.teacher_checkpoint).expanduser().is_file():
            raise ConfigError(f"{where}.teacher_checkpoint: no such file {self.teacher_checkpoint!r}")
        if self.teacher != "largest-anchor" and not self.teacher.startswith("timm:"):
            if not pathlib.Path(self.teacher).expanduser().is_file():
                raise ConfigError(
                    f"{where}.teacher: {self.teacher!r} is neither 'largest-anchor', 'timm:NAME' nor an existing model file"
                )
        self.anchor_configs(where)

    def method(self) -> Any:
        """The method whose stitch layers and paths the pool gets (with this section's stitching options)."""
        from .method import SNNetMethod

        return SNNetMethod(self.kernel_size, self.stride, self.nearest_stitching)

    def anchor_configs(self, where: str = "snnet") -> list[AnchorConfig]:
        from stitchkit.engine.config import from_mapping

        from stitchkit.core.limits import MAX_ROWS

        if len(self.anchors) > MAX_ROWS:
            raise ConfigError(f"{where}.anchors: {len(self.anchors)} anchors; a pool has at most {MAX_ROWS} rows (stitchkit.core.limits.MAX_ROWS)")
        out = []
        for i, table in enumerate(self.anchors):
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where}.anchors[{i}]: expected a table, got {table!r}")
            out.append(from_mapping(AnchorConfig, table, f"{where}.anchors[{i}]"))
        return out

    def train_config(self, base: Any, phase: str) -> Any:
        """The engine's ``TrainConfig`` for ``"anchor_training"`` or ``"finetune"``."""
        from stitchkit.engine.config import check_keys, from_mapping

        overrides = getattr(self, phase)
        fields = [f.name for f in dataclasses.fields(base) if f.init]
        check_keys(overrides, fields, f"snnet.{phase}")
        current = {name: getattr(base, name) for name in fields}
        return from_mapping(type(base), {**current, **overrides}, f"train (with snnet.{phase})")
