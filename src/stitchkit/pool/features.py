"""The features on both sides of every stitch layer: what data-driven stitch initializers fit.

A stitch layer stands in, wherever a path uses it, for the step from one row
to another. From the pool's paths this module finds each *place* a layer is
used: segment ``i`` ends at ``stop`` in the front row, so the layer's input is
the front row's input of block ``stop`` (the output of block ``stop - 1``);
segment ``i + 1`` starts at ``start`` in the end row, so its output should be
the end row's input of block ``start``. Running one batch of images through
both rows gives, per place, matching front and end features. SN-Net's ``ls``
initializer and the example ``procrustes`` plugin both fit a map on them; it
lives in the core so that plugins share it without importing each other.

Features come channels-last, whatever the family: tokens ``(B, N, C)`` as
they are, Swin grids ``(B, H, W, C)`` as they are, CNN feature maps
``(B, C, H, W)`` moved to ``(B, H, W, C)``. So ``reshape(-1, C)`` gives one
row per token or per pixel on both sides, in the same order (a map stitched
into tokens lines up pixel ``(h, w)`` with token ``h * W + w``, as the official
``cnn_to_vit`` stitch does), and every stitch layer is fitted as one
``(dst, src)`` matrix plus a bias (written into a 1x1 convolution as such).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from ..core.errors import ConfigError, PluginError
from ..core.interfaces import AncestryAdapter, TapRequest
from .stitch_layers import affine_weight, set_affine


@dataclass(frozen=True, order=True)
class StitchPlace:
    """One use of a stitch layer: row ``front`` input of block ``front_block`` -> row ``end`` input of block ``end_block``."""

    front: int
    front_block: int
    end: int
    end_block: int


@dataclass(frozen=True)
class StitchFeatures:
    """Matching features at one place of stitch layer ``name``, channels-last: ``front`` ``(B, ..., C_src)``,
    ``end`` ``(B, ..., C_dst)`` with the same number of positions (tokens or pixels) per image."""

    name: str
    place: StitchPlace
    front: torch.Tensor
    end: torch.Tensor


def stitch_places(pool) -> dict[str, list[StitchPlace]]:  # noqa: ANN001 - a stitchkit Pool
    """For each stitch layer of ``pool`` that some path uses, the sorted distinct places it is used at."""
    places: dict[str, set[StitchPlace]] = defaultdict(set)
    for path in pool.paths:
        for i, name in enumerate(path.stitches):
            a, b = path.segments[i], path.segments[i + 1]
            places[name].add(StitchPlace(a.row, a.stop, b.row, b.start))
    return {name: sorted(places[name]) for name in pool.stitches if name in places}


def row_inputs(
    adapter: AncestryAdapter, images: torch.Tensor, blocks: Iterable[int], *, training: bool = False
) -> dict[int, torch.Tensor]:
    """The row's input tokens of each block in ``blocks`` (``0`` = the stem output), from one forward pass.

    The row runs in eval mode (no dropout, no drop-path) without gradients,
    on its own device and dtype; its previous mode is restored.
    ``training=True`` runs it in training mode instead (dropout and drop-path
    as the row was built with), as the official SN-Net code fits LS.
    """
    blocks = sorted(set(blocks))
    model = adapter.model
    was_training = model.training
    model.train(training)
    try:
        param = next(model.parameters())
        with torch.no_grad():
            taps = adapter.forward_taps(
                images.to(param.device, param.dtype),
                TapRequest(blocks=tuple(b - 1 for b in blocks if b > 0)),
            )
    finally:
        model.train(was_training)
    return {b: taps.block_input(b) for b in blocks}


def collect_stitch_features(pool, images: torch.Tensor, *, training: bool = False) -> Iterator[StitchFeatures]:  # noqa: ANN001
    """Front and end features of every place of every used stitch layer, on one batch of ``images``.

    Places are grouped by row pair, so at most two rows' features are alive at
    once; the order is deterministic (row pairs sorted, then layers in pool
    order, then places sorted).
    """
    by_pair: dict[tuple[int, int], list[tuple[str, StitchPlace]]] = defaultdict(list)
    for name, places in stitch_places(pool).items():
        for p in places:
            by_pair[(p.front, p.end)].append((name, p))
    for (front, end), uses in sorted(by_pair.items()):
        f_feats = row_inputs(pool.adapters[front], images, (p.front_block for _, p in uses), training=training)
        e_feats = row_inputs(pool.adapters[end], images, (p.end_block for _, p in uses), training=training)
        for name, p in uses:
            spec = pool.stitch_specs[name]
            front_t = _channels_last(f_feats[p.front_block], spec.src_layout)
            end_t = _channels_last(e_feats[p.end_block], spec.dst_layout)
            yield StitchFeatures(name, p, front_t, end_t)
        del f_feats, e_feats


def _channels_last(features: torch.Tensor, layout: str) -> torch.Tensor:
    return features.movedim(1, -1) if layout == "map" else features


def check_images(images: torch.Tensor | None, initializer: str) -> torch.Tensor:
    """``images`` if it is a non-empty ``(B, C, H, W)`` batch, else a :class:`ConfigError` saying how to supply one."""
    if images is None or not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        got = None if images is None else tuple(getattr(images, "shape", ())) or type(images).__name__
        raise ConfigError(
            f"the {initializer!r} stitch initializer needs a batch of training images (B, C, H, W) in "
            f"InitContext.images, got {got}; in a build config set snnet.init_images (or "
            f"learngene.init_images), or pick an initializer that needs no images such as 'random'"
        )
    return images


Solver = Callable[[torch.Tensor, torch.Tensor, torch.nn.Module], "tuple[torch.Tensor, torch.Tensor]"]


def fit_stitch_layers(pool, images: torch.Tensor, solve: Solver, *, training: bool = False) -> None:  # noqa: ANN001 - a stitchkit Pool
    """Fit every used stitch layer of ``pool`` in place with ``solve(front, end, layer) -> (weight, bias)``.

    ``solve`` runs once per place on channels-last features and sees the layer
    as it was before the fit (a prior, for solvers that refine a starting point;
    :func:`stitchkit.pool.stitch_layers.affine_weight` reads any layer's weight as a
    ``(dst, src)`` matrix); ``weight`` is returned as ``(dst, src)``; a layer used at
    several places gets the mean of their solutions (the official SN-Net rule
    for shared layers). A layer no path uses keeps its weights; the pool's
    dtype and device are kept. ``training``: rows run in training mode (see :func:`row_inputs`).
    """
    solutions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for feats in collect_stitch_features(pool, images, training=training):
        layer = pool.stitches[feats.name]
        weight, bias = solve(feats.front, feats.end, layer)
        for what, got, want in (("weight", weight, affine_weight(layer)), ("bias", bias, layer.bias)):
            if tuple(got.shape) != tuple(want.shape):
                hint = "; transposed? nn.Linear's weight is (out, in)" if tuple(got.shape) == tuple(want.shape)[::-1] else ""
                raise PluginError(
                    f"{what} of stitch layer {feats.name!r} from solve has shape {tuple(got.shape)}, expected "
                    f"{tuple(want.shape)} (at {feats.place}{hint})"
                )
        solutions[feats.name].append((weight, bias))
    for name, sols in solutions.items():
        weight = torch.stack([w for w, _ in sols]).mean(0)
        bias = torch.stack([b for _, b in sols]).mean(0)
        set_affine(pool.stitches[name], weight, bias)
