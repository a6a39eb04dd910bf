"""SN-Net's least-squares (LS) stitch initializer, generic over any pool.

For every stitch layer it finds, from the pool's paths, each place the layer
is used: the front row and the block whose *input* the stitch stands in for
(segment ``i`` ends at ``stop``, so the front features are the front row's
input of block ``stop``, i.e. the output of block ``stop - 1``), and the end
row and block it feeds (segment ``i + 1`` starts at ``start``: the end row's
input of block ``start``). It solves ``end ~= front @ W.T + b`` by least squares
on all tokens of one batch of images, in float64, and gives the layer the
mean of the solutions of its distinct places, as the official code does.

``solver = "official"`` (default) keeps the official ``ps_inv`` cut-off: the
official code takes ``torch.linalg.pinv`` of ``[front, 1]`` in float32, which
drops every singular direction at or below ``max(rows, cols) * eps_float32``
times the largest singular value. The same rule applied in float64 reproduces
its weights, and matters where the features are nearly rank-deficient (dead
ReLU channels): there the exact solution is huge along directions almost empty
at one place, and the mean over a shared layer's places carries that into the
places where they are not empty. ``solver = "exact"`` solves without the
cut-off (float64 precision); ``ridge > 0`` adds a scale-free L2 penalty on the
weight instead (the bias is free), which makes the problem well posed.

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

__all__ = ["SOLVERS", "LeastSquaresInitializer", "StitchPlace", "official_rcond", "solve_affine", "stitch_places"]


SOLVERS = ("official", "exact")


def official_rcond(rows: int, cols: int) -> float:
    """The official ``ps_inv`` cut-off, relative to the largest singular value: ``torch.linalg.pinv``'s
    default ``rtol = max(rows, cols) * eps`` for the float32 matrix ``[front, 1]`` it inverts."""
    return max(rows, cols) * torch.finfo(torch.float32).eps


def solve_affine(front: torch.Tensor, end: torch.Tensor, solver: str = "official",
                 ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``(weight, bias)`` with ``end ~= front @ weight.T + bias``.

    Tokens are flattened to rows (``(B * N, C)``); a column of ones is appended
    so the bias is solved jointly. Solved in float64 on the CPU with the
    SVD-based ``gelsd`` driver (the minimum-norm solution). ``solver``:
    ``"official"`` treats singular values at or below :func:`official_rcond`
    times the largest as zero (the official pseudo-inverse rule), ``"exact"``
    keeps all but those at float64 rounding level. ``ridge > 0`` minimises
    ``||A theta - y||^2 + lam ||W||^2`` with ``lam = ridge * trace(A^T A) / cols(A)``
    (``A = [front, 1]``) instead, solved exactly: the penalty already bounds it.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"least squares: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if ridge < 0:
        raise ConfigError(f"least squares: ridge must be >= 0, got {ridge}")
    x = front.detach().reshape(-1, front.shape[-1]).to("cpu", torch.float64)
    y = end.detach().reshape(-1, end.shape[-1]).to("cpu", torch.float64)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"least squares needs as many front as end tokens, got {x.shape[0]} and {y.shape[0]} "
            f"(front features {tuple(front.shape)}, end features {tuple(end.shape)})"
        )
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    if ridge > 0:  # penalty rows sqrt(lam) * [I, 0] with zero targets: the bias is not penalised
        c = x.shape[1]
        lam = ridge * float(x1.square().sum()) / x1.shape[1]
        x1 = torch.cat([x1, lam**0.5 * torch.eye(c, c + 1, dtype=x.dtype)])
        y = torch.cat([y, torch.zeros(c, y.shape[1], dtype=y.dtype)])
        sol = torch.linalg.lstsq(x1, y, driver="gelsd").solution
    else:
        rcond = official_rcond(*x1.shape) if solver == "official" else None
        sol = torch.linalg.lstsq(x1, y, rcond=rcond, driver="gelsd").solution  # (C_in + 1, C_out)
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
    0 for both alphas turns mixing off). ``solver`` and ``ridge``: see
    :func:`solve_affine` (default: the official pseudo-inverse cut-off).
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
        solver: str = "official",
        ridge: float = 0.0,
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
        if solver not in SOLVERS:
            raise ConfigError(f"ls initializer: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        if ridge < 0:
            raise ConfigError(f"ls initializer: ridge must be >= 0, got {ridge}")
        self.solver, self.ridge = solver, float(ridge)
        self.max_images = max_images
        self.mode = mode
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = float(mixup_alpha), float(cutmix_alpha), float(switch_prob)

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        images = check_images(context.images, self.name)
        if self.max_images is not None:
            images = images[: self.max_images]

        def solve(front: torch.Tensor, end: torch.Tensor, _layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            return solve_affine(front, end, self.solver, self.ridge)

        # Places come grouped by row pair, so at most two rows' features are alive at once.
        if self.mode == "eval":
            fit_stitch_layers(pool, images, solve)
            return
        with seeded_rngs(context.seed):
            mixed = mix_images(images, self.mixup_alpha, self.cutmix_alpha, self.switch_prob)
            fit_stitch_layers(pool, mixed, solve, training=True)
