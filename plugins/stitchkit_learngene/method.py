"""The Learngene Pool method: its stitch layers, its paths and its pipeline.

Stitch layers are the core's sequential ones (``s<r>_<r+1>_<k>``: narrow
row ``r``'s block ``k`` output to wide row ``r+1``'s block ``k+1`` input).
Paths are ``"sequential"`` by default ("k narrow blocks, then l - k wide
blocks", narrow to wide, ``l + 1`` descendants for two rows), or the
official code's ``"sliding-window"`` pairs (see :mod:`.paths`), registered
also as the method ``learngene-pool-sliding-window`` so the planner and the
config can name it, or (beyond the paper) SN-Netv2's ``"two-way"`` routes
between two rows: narrow -> wide, wide -> narrow and the round trips, with
stitch layers in both directions (``l (l - 1) + 2`` descendants; see
docs/snnetv2.md). ``skip_rows`` (sequential and sliding-window paths) also
stitches a row to every wider row beyond the next, so a path may skip rows
(the authors' tiny -> base with a small row present).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import override

from stitchkit.core.plans import TrainingPlan
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import Method
from stitchkit.components.sequential import sequential_paths, sequential_stitches
from stitchkit.core.spec import Path, RowShape, StitchSpec

from .paths import sliding_window_paths

PATH_SETS = ("sequential", "sliding-window", "two-way")


class LearngenePoolMethod(Method):
    """Learngene Pool (Shi et al., AAAI 2024): distil auxiliary models, stitch their blocks."""

    name = "learngene-pool"
    default_initializer = "tm"
    default_sampler = "uniform"
    #: True when the method name fixes the path set (``learngene.paths`` is then ignored).
    fixed_paths = False

    def __init__(self, paths: str = "sequential", skip_rows: bool = False) -> None:
        if paths not in PATH_SETS:
            raise ConfigError(f"unknown learngene-pool path set {paths!r}; use one of {', '.join(PATH_SETS)}")
        if skip_rows and paths == "two-way":
            raise ConfigError("learngene-pool: skip_rows needs the sequential or sliding-window paths (two-way routes join two rows)")
        self.path_set = paths
        self.skip_rows = bool(skip_rows)

    @override
    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        _check_sorted(rows)
        if self.path_set == "two-way":
            from stitchkit_snnetv2.configurations import snnetv2_stitches

            return snnetv2_stitches(rows)
        return sequential_stitches(rows, self.skip_rows)

    @override
    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        _check_sorted(rows)
        if self.path_set == "sliding-window":
            return sliding_window_paths(rows, self.skip_rows)
        if self.path_set == "two-way":
            from stitchkit_snnetv2.configurations import snnetv2_paths

            return [dataclasses.replace(p, label=f"row {p.rows[0]}") if p.is_single_row else p for p in snnetv2_paths(rows)]
        return sequential_paths(rows, self.skip_rows)

    @override
    def check_config(self, config: Mapping[str, Any], *, registry) -> None:  # noqa: ANN001
        """The ``[learngene]`` section, its components and every phase's ``[train]`` overrides."""
        from .pipeline import check_config

        check_config(self, config, registry)

    @override
    def training_phases(self, config: Mapping[str, Any], *, spec: Any, registry: Any, eval_images: int, pretrain_epochs: int) -> TrainingPlan:
        """The ancestry, one distillation per row, stitch init, fine-tuning, evaluation; see :mod:`.cost`."""
        from .cost import learngene_training_phases

        return learngene_training_phases(
            config, spec=spec, registry=registry, eval_images=eval_images, pretrain_epochs=pretrain_epochs,
            path_set=self.path_set if self.fixed_paths else None,
        )

    @override
    def build(self, config: Mapping[str, Any], *, out_dir: pathlib.Path, registry) -> pathlib.Path:  # noqa: ANN001
        """Distil, build, initialise, fine-tune, evaluate; resumable. See :mod:`.pipeline`."""
        from .pipeline import run_pipeline

        return run_pipeline(self, config, out_dir=pathlib.Path(out_dir), registry=registry)

    def build_together(self, configs: Sequence[Mapping[str, Any]], *, out_dir: pathlib.Path, registry) -> list[pathlib.Path]:  # noqa: ANN001
        """Several pools from one distillation, fine-tuned side by side (the demo's TM and LS pools); see
        :func:`.pipeline.build_together`."""
        from .pipeline import build_together

        return build_together(self, configs, out_dir=pathlib.Path(out_dir), registry=registry)


class SlidingWindowLearngenePoolMethod(LearngenePoolMethod):
    """Learngene Pool with the official code's sliding-window paths (18 / 27 descendants for l = 6 / 9)."""

    name = "learngene-pool-sliding-window"
    fixed_paths = True

    def __init__(self, paths: str = "sliding-window", skip_rows: bool = False) -> None:
        super().__init__(paths, skip_rows)


def _check_sorted(rows: Sequence[RowShape]) -> None:
    widths = [r.width for r in rows]
    if widths != sorted(widths):
        raise ConfigError(f"learngene-pool rows must be sorted by width (narrow first), got widths {widths}")
