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
"""

from __future__ import annotations

import torch

from stitchkit.interfaces import InitContext, StitchInitializer

from .extras import averaged_transform


class TMInitializer(StitchInitializer):
    """The paper's TM init: stitch weight = averaged dense-distillation ``W`` (``y = x @ W.T``)."""

    name = "tm"

    @classmethod
    def example(cls, *, pool, **context) -> TMInitializer:  # noqa: ANN001, ANN003
        """An initializer for ``pool``, to which it adds what distillation would have left: the
        ancestry's width (the widest row's) and seeded ``W`` for every narrower row, two levels each."""
        from .extras import store_matrices

        widest = max(s.width for s in pool.shapes)
        pool.info.setdefault("learngene", {}).setdefault("ancestry", {"width": widest})
        g = torch.Generator().manual_seed(0)
        for r, shape in enumerate(pool.shapes):
            if shape.width != widest:
                store_matrices(pool.extras, r, "W", [torch.randn(widest, shape.width, generator=g) / widest**0.5 for _ in range(2)])
        return cls()

    def transfer(self, src: torch.Tensor | None, dst: torch.Tensor | None, src_width: int, dst_width: int) -> torch.Tensor:
        """``T`` (``src_width x dst_width``) with ``x_dst ~ x_src @ T``."""
        back = torch.eye(src_width) if src is None else self.to_ancestry(src)
        return back if dst is None else back @ dst

    def to_ancestry(self, a: torch.Tensor) -> torch.Tensor:
        """Map a row feature back to the ancestry's width: ``x_anc ~ x_row @ (this)``."""
        return a.t()

    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001
        cache: dict[int, torch.Tensor | None] = {}
        for name in sorted(pool.stitches):
            spec = pool.stitch_specs[name]
            for r in (spec.src, spec.dst):
                if r not in cache:
                    cache[r] = averaged_transform(pool, r)
            t = self.transfer(cache[spec.src], cache[spec.dst], spec.src_width, spec.dst_width)
            layer = pool.stitches[name]
            with torch.no_grad():
                layer.weight.copy_(t.t().to(layer.weight))
                layer.bias.zero_()


class TMPinvInitializer(TMInitializer):
    """TM with the pseudo-inverse: stitch weight = ``pinv(W).T`` (the least-squares way back to the ancestry)."""

    name = "tm-pinv"

    def to_ancestry(self, a: torch.Tensor) -> torch.Tensor:
        return torch.linalg.pinv(a.double()).float()
