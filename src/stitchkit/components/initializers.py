"""Stitch initializers that need nothing but the pool."""

from __future__ import annotations

import torch
from typing_extensions import override

from ..core.interfaces import InitContext, StitchInitializer


class RandomInitializer(StitchInitializer):
    """PyTorch's default ``nn.Linear`` init, seeded: the no-knowledge baseline."""

    name = "random"

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            for name in sorted(pool.stitches):
                pool.stitches[name].reset_parameters()
