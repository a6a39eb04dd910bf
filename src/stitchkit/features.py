"""The features on both sides of every stitch layer: what data-driven stitch initializers fit.

A stitch layer stands in, wherever a path uses it, for the step from one row
to another. From the pool's paths this module finds each *place* a layer is
used: segment ``i`` ends at ``stop`` in the front row, so the layer's input is
the front row's input of block ``stop`` (the output of block ``stop - 1``);
segment ``i + 1`` starts at ``start`` in the end row, so its output should be
the end row's input of block ``start``. Running one batch of images through
both rows gives, per place, matching front and end tokens. SN-Net's ``ls``
initializer and the example ``procrustes`` plugin both fit a map on them; it
lives in the core so that plugins share it without importing each other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from .errors import ConfigError, PluginError
from .interfaces import AncestryAdapter, TapRequest


@dataclass(frozen=True, order=True)
class StitchPlace:
    """One use of a stitch layer: row ``front`` input of block ``front_block`` -> row ``end`` input of block ``end_block``."""

    front: int
    front_block: int
    end: int
    end_block: int


@dataclass(frozen=True)
class StitchFeatures:
    """Matching tokens at one place of stitch layer ``name``: ``front`` ``(B, N, C_src)``, ``end`` ``(B, N, C_dst)``."""

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


def row_inputs(adapter: AncestryAdapter, images: torch.Tensor, blocks: Iterable[int]) -> dict[int, torch.Tensor]:
    """The row's input tokens of each block in ``blocks`` (``0`` = the stem output), from one forward pass.

    The row runs in eval mode (no dropout, no drop-path) without gradients,
    on its own device and dtype; its previous mode is restored.
    """
    blocks = sorted(set(blocks))
    model = adapter.model
    was_training = model.training
    model.eval()
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


def collect_stitch_features(pool, images: torch.Tensor) -> Iterator[StitchFeatures]:  # noqa: ANN001
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
        f_feats = row_inputs(pool.adapters[front], images, (p.front_block for _, p in uses))
        e_feats = row_inputs(pool.adapters[end], images, (p.end_block for _, p in uses))
        for name, p in uses:
            yield StitchFeatures(name, p, f_feats[p.front_block], e_feats[p.end_block])
        del f_feats, e_feats


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


Solver = Callable[[torch.Tensor, torch.Tensor, torch.nn.Linear], "tuple[torch.Tensor, torch.Tensor]"]


def fit_stitch_layers(pool, images: torch.Tensor, solve: Solver) -> None:  # noqa: ANN001 - a stitchkit Pool
    """Fit every used stitch layer of ``pool`` in place with ``solve(front, end, layer) -> (weight, bias)``.

    ``solve`` runs once per place and sees the layer as it was before the fit
    (a prior, for solvers that refine a starting point); a layer used at
    several places gets the mean of their solutions (the official SN-Net rule
    for shared layers). A layer no path uses keeps its weights; the pool's
    dtype and device are kept.
    """
    solutions: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
    for feats in collect_stitch_features(pool, images):
        layer = pool.stitches[feats.name]
        weight, bias = solve(feats.front, feats.end, layer)
        for what, got, want in (("weight", weight, layer.weight), ("bias", bias, layer.bias)):
            if tuple(got.shape) != tuple(want.shape):
                hint = "; transposed? nn.Linear's weight is (out, in)" if tuple(got.shape) == tuple(want.shape)[::-1] else ""
                raise PluginError(
                    f"{what} of stitch layer {feats.name!r} from solve has shape {tuple(got.shape)}, expected "
                    f"{tuple(want.shape)} (at {feats.place}{hint})"
                )
        solutions[feats.name].append((weight, bias))
    for name, sols in solutions.items():
        layer = pool.stitches[name]
        weight = torch.stack([w for w, _ in sols]).mean(0)
        bias = torch.stack([b for _, b in sols]).mean(0)
        with torch.no_grad():
            layer.weight.copy_(weight.to(layer.weight.device, layer.weight.dtype))
            layer.bias.copy_(bias.to(layer.bias.device, layer.bias.dtype))
