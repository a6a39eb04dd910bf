"""Stitch initialisation from the learned transformation matrices (TM).

For rows ``a`` (narrow) and ``b`` (wide) let ``A_a`` and ``A_b`` be their
block-based matrices averaged over levels (``d x d_r``; the identity for a row
as wide as the ancestry). Distillation made ``x_a ~ x_anc @ A_a`` and
``x_b ~ x_anc @ A_b``, so a stitch maps ``x_a -> x_anc -> x_b``:

- ``tm`` (the paper): ``x_anc ~ x_a @ A_a.T``, so ``y = x_a @ A_a.T @ A_b``;
  the ``nn.Linear`` weight is ``A_b.T @ A_a`` -- for the paper's two rows
  (``A_b = I``) the stitch weight *is* the averaged ``W`` (shape ``(d, d')``).
- ``tm-pinv``: ``x_anc @ A_a = x_a`` has ``d`` unknowns and ``d' < d``
  equations per token; its minimum-norm solution is ``x_anc = x_a @ pinv(A_a)``
  (``pinv(A_a) = (A_a.T A_a)^-1 A_a.T``, ``d' x d``), so
  ``y = x_a @ pinv(A_a) @ A_b`` and the weight is ``(pinv(A_a) @ A_b).T`` --
  ``pinv(W).T`` for the paper's rows. Both coincide when ``W`` has
  orthonormal columns.

Biases start at zero. Every stitch layer between the same two rows gets the
same weight, as in the official code.

- ``tm-ls`` (not in the paper): TM, then a least-squares refinement on a batch
  of training images, pulled towards TM: per place, with ``A = [x_a, 1]``,
  ``theta = argmin ||A theta - y_b||^2 + lam ||theta - theta_TM||^2``
  (``lam = ridge * trace(A^T A) / cols(A)``, so ``ridge`` is scale-free).
  ``ridge -> 0`` gives SN-Net's LS solved exactly (``ls`` with
  ``solver = "exact"``), ``ridge -> inf`` gives TM; places sharing a layer
  are averaged like LS. Why: TM only knows what distillation matched
  at three levels, LS only knows one batch; the ridge keeps the TM direction
  where the batch says little.
"""

from __future__ import annotations

import torch
from typing_extensions import override

from stitchkit.core.errors import ConfigError
from stitchkit.pool.features import check_images, fit_stitch_layers
from stitchkit.core.interfaces import InitContext, StitchInitializer
from stitchkit.pool.stitch_layers import affine_weight, set_affine

from .extras import averaged_transform


class TMInitializer(StitchInitializer):
    """The paper's TM init: stitch weight = averaged dense-distillation ``W`` (``y = x @ W.T``)."""

    name = "tm"

    @classmethod
    @override
    def example(cls, *, pool, **context) -> TMInitializer:  # noqa: ANN001, ANN003
        """An initializer for ``pool``, to which it adds what distillation would have left: the
        ancestry's width (the widest row's) and seeded ``W`` for every narrower row, two levels each
        (one per stage, at the stage's widths, in a hierarchical pool)."""
        from .extras import store_matrices

        wide = max(pool.shapes, key=lambda s: s.width)
        ancestry: dict = {"width": wide.width}
        if wide.stages:  # a hierarchical pool: one level per stage, at the stage's widths
            ancestry["stages"] = [list(st) for st in wide.stage_shapes]
        pool.info.setdefault("learngene", {}).setdefault("ancestry", ancestry)
        g = torch.Generator().manual_seed(0)
        for r, shape in enumerate(pool.shapes):
            if shape.stage_shapes == wide.stage_shapes:
                continue
            widths = [(aw, w) for (_, aw, _), (_, w, _) in zip(wide.stage_shapes, shape.stage_shapes)] if wide.stages else \
                [(wide.width, shape.width)] * 2
            store_matrices(pool.extras, r, "W", [torch.randn(a, w, generator=g) / a**0.5 for a, w in widths])
        return cls()

    def transfer(self, src: torch.Tensor | None, dst: torch.Tensor | None, src_width: int, dst_width: int) -> torch.Tensor:
        """``T`` (``src_width x dst_width``) with ``x_dst ~ x_src @ T``."""
        back = torch.eye(src_width) if src is None else self.to_ancestry(src)
        return back if dst is None else back @ dst

    def to_ancestry(self, a: torch.Tensor) -> torch.Tensor:
        """Map a row feature back to the ancestry's width: ``x_anc ~ x_row @ (this)``."""
        return a.t()

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        cache: dict[tuple[int, int], torch.Tensor | None] = {}
        for name in sorted(pool.stitches):
            spec = pool.stitch_specs[name]
            for r, w in ((spec.src, spec.src_width), (spec.dst, spec.dst_width)):
                if (r, w) not in cache:  # per width: a hierarchical row has one per stage
                    cache[(r, w)] = averaged_transform(pool, r, w)
            t = self.transfer(cache[(spec.src, spec.src_width)], cache[(spec.dst, spec.dst_width)], spec.src_width, spec.dst_width)
            layer = pool.stitches[name]
            set_affine(layer, t.t(), torch.zeros_like(layer.bias))


class TMPinvInitializer(TMInitializer):
    """TM with the pseudo-inverse: stitch weight = ``pinv(W).T`` (the least-squares way back to the ancestry)."""

    name = "tm-pinv"

    def to_ancestry(self, a: torch.Tensor) -> torch.Tensor:
        return torch.linalg.pinv(a.double()).float()


def solve_ridge_towards(front: torch.Tensor, end: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` minimising ``||front @ W.T + b - end||^2 + lam ||[W, b] - [weight, bias]||^2``
    in float64, with ``lam = ridge * trace(A^T A) / cols(A)`` for ``A = [front, 1]``."""
    front, end = front.reshape(-1, front.shape[-1]), end.reshape(-1, end.shape[-1])  # all tokens
    a = torch.cat([front.double(), torch.ones(front.shape[0], 1, dtype=torch.float64, device=front.device)], dim=1)
    prior = torch.cat([weight.detach().double().t(), bias.detach().double()[None]], dim=0).to(a.device)
    gram = a.t() @ a
    lam = ridge * torch.trace(gram) / gram.shape[0]
    theta = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64, device=a.device),
                               a.t() @ end.double() + lam * prior)
    return theta[:-1].t(), theta[-1]


class TMRidgeInitializer(TMInitializer):
    """TM, then least squares on training images pulled towards TM (``ridge`` 0: LS, large: TM)."""

    name = "tm-ls"
    needs_images = True

    def __init__(self, ridge: float = 0.1) -> None:
        if ridge < 0:
            raise ConfigError(f"tm-ls initializer: ridge must be >= 0, got {ridge}")
        self.ridge = ridge

    @override
    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        images = check_images(context.images, self.name)
        super().initialize(pool, context)
        fit_stitch_layers(pool, images, lambda front, end, layer: solve_ridge_towards(
            front, end, affine_weight(layer), getattr(layer, "bias"), self.ridge))
