"""The ``[snnetv2]`` section of a build config: SN-Net's section plus SN-Netv2's options.

Everything of ``[snnet]`` applies (anchors, initializer, fine-tuning,
distillation); the defaults follow the official SN-Netv2 code: LS-initialised
low-rank stitch layers of rank 64 (``lora_r``, scale ``1 / 64``), all four
route kinds, and resource-constrained sampling (``ros``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stitchkit.core.errors import ConfigError
from stitchkit_snnet.config import SNNetConfig

from .configurations import ROUTES, check_two_anchors


@dataclass
class SNNetv2Config(SNNetConfig):
    """SN-Net's keys, SN-Netv2's defaults, and the route options of :class:`~stitchkit_snnetv2.method.SNNetv2Method`."""

    sampler: str = "ros"
    stitch_rank: int = 64
    #: Route kinds to build and train: any of ``sl``, ``ls``, ``lsl``, ``sls``.
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    #: Also keep the configuration the official code leaves out (small anchor + large head).
    head_only: bool = False

    def validate(self, where: str = "snnetv2") -> None:
        super().validate(where)
        bad = sorted(set(self.routes) - set(ROUTES))
        if bad or not self.routes:
            raise ConfigError(f"{where}.routes: give a non-empty list among {', '.join(ROUTES)}, got {self.routes!r}")
        if (self.kernel_size, self.stride, self.nearest_stitching) != (2, 1, True):
            raise ConfigError(
                f"{where}: kernel_size, stride and nearest_stitching are SN-Net's stitching options; "
                "SN-Netv2 enumerates its routes itself (choose them with routes = [...])"
            )
        if len(self.anchors) != 2:
            raise ConfigError(
                f"{where}.anchors: SN-Netv2 stitches exactly two anchors (small first), got {len(self.anchors)}; "
                "for three or more use method = \"snnet\""
            )

    def method(self) -> Any:
        from .method import SNNetv2Method

        return SNNetv2Method(routes=self.routes, head_only=self.head_only)


__all__ = ["SNNetv2Config", "check_two_anchors"]
