"""The ``snnet`` method: SN-Net's stitch layers and configurations, and its build pipeline."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import override

from stitchkit.core.plans import TrainingPlan
from stitchkit.core.interfaces import Method
from stitchkit.core.spec import Path, RowShape, StitchSpec

from .configurations import Stitching, snnet_paths, snnet_stitches


class SNNetMethod(Method):
    """Stitchable Neural Networks (Pan et al., CVPR 2023), as the official code enumerates them.

    Rows are anchors ordered by size; by default stitching goes from each
    anchor to the next larger one only (``nearest_stitching = False`` adds every other
    pair and chains of three); equal depths use paired stitching (a sliding
    window, ``kernel_size`` 2 and ``stride`` 1 by default: 34 configurations
    on 11 layers for 12 blocks), unequal depths unpaired (nearest-depth)
    stitching. Hierarchical anchors (Swin, ResNet) are stitched stage by
    stage, as the official ``stitching_swin`` and ``stitching_resnet_swin``
    code does. Paths: the anchors, then each combination's configurations.
    """

    name = "snnet"
    default_initializer = "ls"
    default_sampler = "uniform"

    def __init__(
        self, kernel_size: int = 2, stride: int = 1, nearest_stitching: bool = True, stages: Sequence[int] | None = None
    ) -> None:
        self.stitching = Stitching(kernel_size, stride, nearest_stitching)
        #: For hierarchical anchors: the stages stitched (default: the official code's choice,
        #: see :func:`~stitchkit_snnet.configurations.stitched_stages`).
        self.stages = None if stages is None else [int(s) for s in stages]

    @override
    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        return snnet_stitches(rows, self.stitching, self.stages)

    @override
    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        paths = snnet_paths(rows, self.stitching, self.stages)
        names = {s.name for s in stitches}
        expected = {s.name for s in snnet_stitches(rows, self.stitching, self.stages)}
        if names != expected:
            from stitchkit.core.errors import ConfigError

            raise ConfigError(
                f"snnet paths need exactly the stitch layers snnet defines for rows "
                f"{[str(r) for r in rows]}; missing {sorted(expected - names)}, extra {sorted(names - expected)}"
            )
        return paths

    @override
    def check_config(self, config: Mapping[str, Any], *, registry) -> None:  # noqa: ANN001
        """The ``[snnet]`` section, its anchors, components and every phase's ``[train]`` overrides."""
        from .build import check_snnet_config

        check_snnet_config(config, registry)

    @override
    def training_phases(self, config: Mapping[str, Any], *, spec: Any, registry: Any, eval_images: int, pretrain_epochs: int) -> TrainingPlan:
        """Anchors, LS feature pass, fine-tuning, evaluation; see :mod:`.cost`."""
        from .cost import snnet_training_phases

        return snnet_training_phases(config, spec=spec, registry=registry, eval_images=eval_images, pretrain_epochs=pretrain_epochs)

    @override
    def build(self, config: Mapping[str, Any], *, out_dir: pathlib.Path, registry) -> pathlib.Path:  # noqa: ANN001
        from .build import build_snnet

        return build_snnet(config, out_dir=pathlib.Path(out_dir), registry=registry)

    @override
    def import_checkpoint(self, path: pathlib.Path, *, anchors: Sequence[str], registry) -> Any:  # noqa: ANN001
        """An official SN-Net checkpoint (ziplab/SN-Net ``stitching_deit``) as a pool; see :mod:`.official`."""
        from .official import import_snnet

        s = self.stitching
        return import_snnet(path, anchors, kernel_size=s.kernel_size, stride=s.stride, registry=registry)
