"""Path samplers: which path(s) one optimisation step trains.

All randomness comes from the generator the trainer passes in, seeded the
same on every rank, so distributed ranks always agree on the path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from typing_extensions import override

from .errors import ConfigError
from .interfaces import PathSampler
from .spec import Path


def _pick(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator).item())


class UniformSampler(PathSampler):
    """One path per step, uniformly at random (single-path sampling, as in SN-Net and the paper)."""

    name = "uniform"

    @override
    def sample(self, generator: torch.Generator) -> list[Path]:
        return [self.paths[_pick(len(self.paths), generator)]]


class FlopsGroupedSampler(PathSampler):
    """SN-Netv2's rule: sort paths by MACs, split them into ``groups`` equal-size
    groups, pick a group uniformly, then a path in it uniformly. Small and large
    descendants are trained equally often even when most paths are mid-sized.
    """

    name = "flops-grouped"

    def __init__(self, paths: Sequence[Path], macs: Sequence[int] | None = None, groups: int = 4) -> None:
        super().__init__(paths, macs)
        if self.macs is None:
            raise ConfigError("the flops-grouped sampler needs the MACs of every path")
        if groups < 1:
            raise ConfigError(f"the flops-grouped sampler needs groups >= 1, got {groups}")
        order = sorted(range(len(self.paths)), key=lambda i: (self.macs[i], i))  # type: ignore[index]
        groups = min(groups, len(order))
        bounds = [round(g * len(order) / groups) for g in range(groups + 1)]
        self.groups = [[self.paths[i] for i in order[bounds[g] : bounds[g + 1]]] for g in range(groups)]

    @override
    def sample(self, generator: torch.Generator) -> list[Path]:
        group = self.groups[_pick(len(self.groups), generator)]
        return [group[_pick(len(group), generator)]]


class SandwichSampler(PathSampler):
    """The sandwich rule: the smallest path, the largest path and one random path
    every step, with gradients accumulated into one update.
    """

    name = "sandwich"

    def __init__(self, paths: Sequence[Path], macs: Sequence[int] | None = None) -> None:
        super().__init__(paths, macs)
        if self.macs is None:
            raise ConfigError("the sandwich sampler needs the MACs of every path")
        order = sorted(range(len(self.paths)), key=lambda i: (self.macs[i], i))  # type: ignore[index]
        self.smallest, self.largest = self.paths[order[0]], self.paths[order[-1]]

    @override
    def sample(self, generator: torch.Generator) -> list[Path]:
        return [self.smallest, self.largest, self.paths[_pick(len(self.paths), generator)]]
