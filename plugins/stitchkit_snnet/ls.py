"""SN-Net's least-squares (LS) stitch initializer, generic over any pool.

For every stitch layer it finds, from the pool's paths, each place the layer
is used: the front row and the block whose *input* the stitch stands in for
(segment ``i`` ends at ``stop``, so the front features are the front row's
input of block ``stop``, i.e. the output of block ``stop - 1``), and the end
row and block it feeds (segment ``i + 1`` starts at ``start``: the end row's
input of block ``start``). It solves ``end ~= front @ W.T + b`` by least squares
on all tokens of one batch of images, in float64, and gives the layer the
mean of the solutions of its distinct places, as the official code does.

``mode = "eval"`` (default): rows run in eval mode on the images as given,
so the result is a deterministic function of the batch. ``mode = "train"``
fits LS as the official code does: rows in training mode (drop-path and
dropout active, as the rows were built) and the batch mixed by timm's
``Mixup`` (mixup 0.8 / CutMix 1.0, switch probability 0.5, the DeiT recipe's
defaults), seeded by ``InitContext.seed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from typing_extensions import override

from stitchkit.core.errors import ConfigError
from stitchkit.pool.features import StitchPlace, check_images, fit_stitch_layers, stitch_places
from stitchkit.core.interfaces import InitContext, StitchInitializer

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


MODES = ("eval", "train")


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """torch's and numpy's global generators seeded for the block, then restored (timm's Mixup draws from numpy)."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


def mix_images(images: torch.Tensor, mixup_alpha: float, cutmix_alpha: float, switch_prob: float) -> torch.Tensor:
    """One batch through ``timm.data.Mixup`` in batch mode (labels are irrelevant to LS and dropped).

    Mixup pairs image ``i`` with image ``B - 1 - i``, so an odd batch loses its last image.
    """
    from timm.data import Mixup

    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images
    images = images[: len(images) - len(images) % 2].clone()
    if len(images) == 0:
        raise ConfigError("ls initializer: mode 'train' mixes pairs of images and needs at least 2")
    mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob, mode="batch", num_classes=1)
    mixed, _ = mixup(images, torch.zeros(len(images), dtype=torch.long, device=images.device))
    return mixed


class LeastSquaresInitializer(StitchInitializer):
    """SN-Net's LS init: each stitch layer solves front features -> end features on one batch.

    ``max_images`` caps the batch taken from :attr:`InitContext.images`
    (SN-Net uses 100 images). ``mode``: ``"eval"`` (rows in eval mode, images
    as given) or ``"train"`` (the official code: rows in training mode, images
    mixed by timm's Mixup with ``mixup_alpha``/``cutmix_alpha``/``switch_prob``;
    0 for both alphas turns mixing off).
    """

    name = "ls"
    needs_images = True

    def __init__(
        self,
        max_images: int | None = None,
        mode: str = "eval",
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        if max_images is not None and max_images < 1:
            raise ConfigError(f"ls initializer: max_images must be >= 1, got {max_images}")
        if mode not in MODES:
            raise ConfigError(f"ls initializer: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1:
            raise ConfigError(
                f"ls initializer: mixup_alpha and cutmix_alpha must be >= 0 and switch_prob in [0, 1], "
                f"got {mixup_alpha}, {cutmix_alpha}, {switch_prob}"
            )
        self.max_images = max_images
        self.mode = mode
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = float(mixup_alpha), float(cutmix_alpha), float(switch_prob)

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        images = check_images(context.images, self.name)
        if self.max_images is not None:
            images = images[: self.max_images]

        def solve(front: torch.Tensor, end: torch.Tensor, _layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return solve_affine(front, end)

        # Places come grouped by row pair, so at most two rows' features are alive at once.
        if self.mode == "eval":
            fit_stitch_layers(pool, images, solve)
            return
        with seeded_rngs(context.seed):
            mixed = mix_images(images, self.mixup_alpha, self.cutmix_alpha, self.switch_prob)
            fit_stitch_layers(pool, mixed, solve, training=True)
