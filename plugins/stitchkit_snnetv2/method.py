"""The ``snnetv2`` method: two-way stitching between two anchors, and its build pipeline."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from stitchkit.core.plans import TrainingPlan
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import Method
from stitchkit.core.spec import Path, RowShape, StitchSpec

from .configurations import ROUTES, snnetv2_paths, snnetv2_stitches


class SNNetv2Method(Method):
    """SN-Netv2 (Pan et al., "Stitched ViTs are Flexible Vision Backbones"), as the official code enumerates it.

    Two anchors of one family, the smaller first; stitching goes both ways
    (``routes``: any of ``sl``, ``ls``, ``lsl``, ``sls``, all by default, as
    the official ``include_*`` flags). ``head_only=True`` also keeps the
    configuration the official code leaves out (the whole small anchor with
    the large anchor's head). Two 12-block anchors give 134 paths on 22
    stitch layers.
    """

    name = "snnetv2"
    default_initializer = "ls"
    default_sampler = "ros"

    def __init__(self, routes: Sequence[str] = ROUTES, head_only: bool = False) -> None:
        if isinstance(routes, str) or not routes:
            raise ConfigError(f"snnetv2 routes: give a non-empty list among {', '.join(ROUTES)}, got {routes!r}")
        self.routes = tuple(routes)
        self.head_only = bool(head_only)

    def stitches(self, rows: Sequence[RowShape]) -> list[StitchSpec]:
        return snnetv2_stitches(rows, self.routes, head_only=self.head_only)

    def paths(self, rows: Sequence[RowShape], stitches: Sequence[StitchSpec]) -> list[Path]:
        names = {s.name for s in stitches}
        expected = {s.name for s in self.stitches(rows)}
        if names != expected:
            raise ConfigError(
                f"snnetv2 paths need exactly the stitch layers snnetv2 defines for rows "
                f"{[str(r) for r in rows]}; missing {sorted(expected - names)}, extra {sorted(names - expected)}"
            )
        return snnetv2_paths(rows, self.routes, head_only=self.head_only)

    def check_config(self, config: Mapping[str, Any], *, registry) -> None:  # noqa: ANN001
        """The ``[snnetv2]`` section, checked as SN-Net's build checks ``[snnet]``."""
        from stitchkit_snnet.build import check_snnet_config

        from .config import SNNetv2Config

        check_snnet_config(config, registry, name="snnetv2", config_cls=SNNetv2Config)

    def training_phases(self, config: Mapping[str, Any], *, spec: Any, registry: Any, eval_images: int, pretrain_epochs: int) -> TrainingPlan:
        """SN-Net's phases from the ``[snnetv2]`` section; see :mod:`stitchkit_snnet.cost`."""
        from stitchkit_snnet.cost import snnet_training_phases

        from .config import SNNetv2Config

        return snnet_training_phases(config, spec=spec, registry=registry, eval_images=eval_images,
                                     pretrain_epochs=pretrain_epochs, name="snnetv2", config_cls=SNNetv2Config)

    def build(self, config: Mapping[str, Any], *, out_dir: pathlib.Path, registry) -> pathlib.Path:  # noqa: ANN001
        from .build import build_snnetv2

        return build_snnetv2(config, out_dir=pathlib.Path(out_dir), registry=registry)
