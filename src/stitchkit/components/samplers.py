"""Path samplers: which path(s) one optimisation step trains.

All randomness comes from the generator the trainer passes in, seeded the
same on every rank, so distributed ranks always agree on the path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from typing_extensions import override

from ..core.errors import ConfigError
from ..core.interfaces import PathSampler
from ..core.spec import Path


def _pick(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator).item())


class UniformSampler(PathSampler):
    """One path per step, uniformly at random (single-path sampling, as in SN-Net and the paper)."""

    name = "uniform"

    @override
    def sample(self, generator: torch.Generator) -> list[Path]:
        return [self.paths[_pick(len(self.paths), generator)]]


class FlopsGroupedSampler(PathSampler):
    """Quantile groups: sort paths by MACs, split them into ``groups`` groups of
    equal *count*, pick a group uniformly, then a path in it uniformly. Not
    SN-Netv2's rule, which groups by a MACs *gap* (that is :class:`ROSSampler`,
    ``ros``): equal-count groups follow where paths are dense, gap groups
    follow the resource range.
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


def group_by_gap(macs: Sequence[int], gap: float) -> list[list[int]]:
    """Indices of ``macs`` in ascending-MACs groups: a path opens a new group when
    its MACs exceed the current group's first by more than ``gap``.

    The rule of SN-Netv2's ``group_subnets_by_flops``; ties keep index order.
    (The official loop measures the first group from 0 rather than from its
    first path; the two agree whenever the smallest path exceeds ``gap``, as in
    all the paper's settings.)
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(macs)), key=lambda i: (macs[i], i)):
        if groups and macs[i] - macs[groups[-1][0]] <= gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


class ROSSampler(PathSampler):
    """SN-Netv2's resource-constrained sampling: paths grouped by MACs, a group
    drawn, then a path in it, so training covers the resource range evenly
    rather than following where most paths lie.

    Groups come from :func:`group_by_gap` with ``gap`` in MACs (the official
    default: 1 GFLOPs in fvcore's count, i.e. 1e9 MACs) or ``gap_fraction`` of
    the range between the smallest and largest path. ``weighting="uniform"``
    draws every group equally often (the official default); ``"linear"``
    weights group ``i`` (ascending MACs) by ``i / k + 1 / G``, the official
    ``--flops_sampling_k`` rule, favouring larger paths.
    """

    name = "ros"

    def __init__(
        self,
        paths: Sequence[Path],
        macs: Sequence[int] | None = None,
        gap: float | None = None,
        gap_fraction: float | None = None,
        weighting: str = "uniform",
        k: float = 1.0,
    ) -> None:
        super().__init__(paths, macs)
        if self.macs is None:
            raise ConfigError("the ros sampler needs the MACs of every path")
        if gap is not None and gap_fraction is not None:
            raise ConfigError("the ros sampler takes gap (MACs) or gap_fraction (of the MACs range), not both")
        if gap_fraction is not None and not 0 <= gap_fraction <= 1:
            raise ConfigError(f"the ros sampler needs 0 <= gap_fraction <= 1, got {gap_fraction}")
        if gap is not None and gap < 0:
            raise ConfigError(f"the ros sampler needs gap >= 0 MACs, got {gap}")
        if weighting not in ("uniform", "linear"):
            raise ConfigError(f"the ros sampler's weighting must be 'uniform' or 'linear', got {weighting!r}")
        if not k > 0:
            raise ConfigError(f"the ros sampler needs k > 0, got {k}")
        if gap_fraction is not None:
            gap = gap_fraction * (max(self.macs) - min(self.macs))
        self.gap = float(1e9 if gap is None else gap)
        self.groups = [[self.paths[i] for i in g] for g in group_by_gap(self.macs, self.gap)]
        n = len(self.groups)
        weights = [1.0] * n if weighting == "uniform" else [i / k + 1 / n for i in range(n)]
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)

    def sample(self, generator: torch.Generator) -> list[Path]:
        g = int(torch.multinomial(self.weights, 1, generator=generator).item())
        group = self.groups[g]
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
