"""SN-Net's least-squares (LS) stitch initializer, generic over any pool.

For every stitch layer it finds, from the pool's paths, each place the layer
is used: the front row and the block whose *input* the stitch stands in for
(segment ``i`` ends at ``stop``, so the front features are the front row's
input of block ``stop``, i.e. the output of block ``stop - 1``), and the end
row and block it feeds (segment ``i + 1`` starts at ``start``: the end row's
input of block ``start``). It solves ``end ~= front @ W.T + b`` by least squares
on all tokens of one batch of images, in float64, and gives the layer the
mean of the solutions of its distinct places, as the official code does.
Rows run in eval mode (no drop-path, no mixup), so the result is
deterministic for a given batch.
"""

from __future__ import annotations

import torch
from typing_extensions import override

from stitchkit.errors import ConfigError
from stitchkit.features import StitchPlace, check_images, fit_stitch_layers, stitch_places
from stitchkit.interfaces import InitContext, StitchInitializer

__all__ = ["LeastSquaresInitializer", "StitchPlace", "solve_affine", "stitch_places"]


def solve_affine(front: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``(weight, bias)`` with ``end ~= front @ weight.T + bias``.

    Tokens are flattened to rows (``(B * N, C)``); a column of ones is appended
    so the bias is solved jointly. Solved in float64 on the CPU with the
    SVD-based ``gelsd`` driver, which gives the minimum-norm solution (the
    pseudo-inverse solution of the official code) even for rank-deficient
    features.
    """
    x = front.detach().reshape(-1, front.shape[-1]).to("cpu", torch.float64)
    y = end.detach().reshape(-1, end.shape[-1]).to("cpu", torch.float64)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"least squares needs as many front as end tokens, got {x.shape[0]} and {y.shape[0]} "
            f"(front features {tuple(front.shape)}, end features {tuple(end.shape)})"
        )
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    sol = torch.linalg.lstsq(x1, y, driver="gelsd").solution  # (C_in + 1, C_out)
    return sol[:-1].T.contiguous(), sol[-1].contiguous()


class LeastSquaresInitializer(StitchInitializer):
    """SN-Net's LS init: each stitch layer solves front features -> end features on one batch.

    ``max_images`` caps the batch taken from :attr:`InitContext.images`
    (SN-Net uses 100 images).
    """

    name = "ls"
    needs_images = True

    def __init__(self, max_images: int | None = None) -> None:
        if max_images is not None and max_images < 1:
            raise ConfigError(f"ls initializer: max_images must be >= 1, got {max_images}")
        self.max_images = max_images

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        images = check_images(context.images, self.name)
        if self.max_images is not None:
            images = images[: self.max_images]
        # Places come grouped by row pair, so at most two rows' features are alive at once.
        fit_stitch_layers(pool, images, lambda front, end, _layer: solve_affine(front, end))
