"""The orthogonal-Procrustes stitch initializer.

For each place a stitch layer is used (found by :mod:`stitchkit.pool.features`,
exactly the places SN-Net's ``ls`` initializer fits), the front row's tokens
``X`` (``n x d_src``) and the end row's tokens ``Y`` (``n x d_dst``) on one
batch of images are centred, ``Xc = X - mean(X)``, ``Yc = Y - mean(Y)``, and

    W = argmin ||Xc W^T - Yc||_F  over W (d_dst x d_src) with orthonormal columns or rows,

solved by one SVD: ``Yc^T Xc = U S V^T`` gives ``W = U V^T``; the bias is
``mean(Y) - W mean(X)``. For a widening layer (``d_dst >= d_src``, every
stitch of Learngene Pool and SN-Net) ``W`` has orthonormal columns,
``||Xc W^T||`` does not depend on ``W`` and ``U V^T`` is the exact
minimiser. For a narrowing layer ``W`` has orthonormal rows and ``U V^T``
is the classical Procrustes solution (it maximises ``tr(W^T Yc^T Xc)``, i.e.
it is the exact minimiser of ``||Yc W - Xc||``, the map back); both agree
whenever ``Y`` is an exact orthogonal image of ``X``. A layer used at
several places gets the mean of their solutions, as ``ls`` does.

Why: least squares fits the scale of the features too, which on few images
overfits; an orthogonal map keeps the front features' geometry (norms and
angles) and only rotates them into the end row's basis.
"""

from __future__ import annotations

import torch

from stitchkit.core.errors import ConfigError
from stitchkit.pool.features import check_images, fit_stitch_layers
from stitchkit.core.interfaces import InitContext, StitchInitializer


def solve_procrustes(front: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)``, float64 on the CPU, with ``end ~= front @ weight.T + bias`` and ``weight``
    the orthogonal-Procrustes map between the centred features (shape ``(d_dst, d_src)``).

    Tokens are flattened to rows (``(B * N, C)``). The SVD's sign ambiguities
    cancel in ``U V^T``, so the result is unique when ``Yc^T Xc`` has full rank.
    """
    x = front.detach().reshape(-1, front.shape[-1]).to("cpu", torch.float64)
    y = end.detach().reshape(-1, end.shape[-1]).to("cpu", torch.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(
            f"procrustes needs as many front as end tokens (at least one), got {x.shape[0]} and {y.shape[0]} "
            f"(front features {tuple(front.shape)}, end features {tuple(end.shape)})"
        )
    mx, my = x.mean(0), y.mean(0)
    u, _, vh = torch.linalg.svd((y - my).T @ (x - mx), full_matrices=False)
    weight = u @ vh
    return weight, my - weight @ mx


class ProcrustesInitializer(StitchInitializer):
    """Orthogonal Procrustes: each stitch layer starts as the best orthogonal map from front to end features, plus the mean offset.

    ``max_images`` caps the batch taken from :attr:`InitContext.images`.
    A layer no path uses keeps its weights.
    """

    name = "procrustes"
    needs_images = True

    def __init__(self, max_images: int | None = None) -> None:
        if max_images is not None and max_images < 1:
            raise ConfigError(f"procrustes initializer: max_images must be >= 1, got {max_images}")
        self.max_images = max_images

    def initialize(self, pool, context: InitContext) -> None:  # noqa: ANN001 - a stitchkit Pool
        images = check_images(context.images, self.name)
        if self.max_images is not None:
            images = images[: self.max_images]
        fit_stitch_layers(pool, images, lambda front, end, _layer: solve_procrustes(front, end))
