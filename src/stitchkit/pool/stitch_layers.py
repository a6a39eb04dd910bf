"""Stitch layers, chosen by the two feature signatures they join.

* tokens -> tokens, and channels-last grids (``nhwc``) -> ``nhwc``: ``nn.Linear`` on
  the channel dimension, applied to every token (SN-Net's DeiT and Swin stitching);
* feature map -> feature map: a 1x1 ``nn.Conv2d`` (SN-Net's ResNet stitching,
  ``stitching_resnet_swin/timm/models/snnet.py``: ``nn.Conv2d(in, out, 1, 1)``);
* feature map -> tokens / ``nhwc``: the same 1x1 convolution, then the map is
  laid out as the transformer expects (the official ``cnn_to_vit`` stitching
  layer reshapes ``(B, C, H, W)`` to ``(B, H*W, C)``).

Every one is a linear map of each position's channels, so one ``weight`` of
``(dst, src)`` channels (``(dst, src, 1, 1)`` for the convolutions) and one
``bias`` describe it, and least squares fits it per token / per pixel. The
spatial grid never changes across a stitch: the official code stitches only
boundaries of equal resolution (its least-squares solver refuses unequal
spatial sizes), and so does stitchkit (:func:`stitch_layouts` raises a
:class:`~stitchkit.core.errors.ConfigError`). Tokens cannot become a feature map
(the official code never stitches a transformer into a CNN).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import FeatureSignature, StitchSpec
from .lowrank import low_rank


class MapStitch(nn.Conv2d):
    """1x1 convolution between feature maps ``(B, C, H, W)``, optionally re-laid out as tokens or NHWC."""

    def __init__(self, in_channels: int, out_channels: int, out_layout: str = "map") -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
        self.out_layout = out_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.out_layout == "nhwc":
            return y.permute(0, 2, 3, 1)
        if self.out_layout == "tokens":
            return y.flatten(2).transpose(1, 2)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, out_layout={self.out_layout}"


def stitch_layouts(name: str, front: FeatureSignature, end: FeatureSignature) -> tuple[str, str]:
    """The (src, dst) layouts of a stitch joining ``front`` to ``end``; a ConfigError if none can."""
    if front.layout != "map" and end.layout == "map":
        raise ConfigError(
            f"stitch layer {name!r} would join {front} to the feature map {end}: stitchkit (like the "
            f"official SN-Net) stitches transformers into transformers and CNNs into either, never tokens into a CNN; "
            f"order the anchors CNN first"
        )
    if front.positions != end.positions or (front.layout != "tokens" and end.layout != "tokens" and front.size != end.size):
        raise ConfigError(
            f"stitch layer {name!r} joins {front} to {end}, whose grids differ; the official SN-Net stitches only "
            f"boundaries of equal resolution (its least squares refuses unequal spatial sizes): stitch at stages "
            f"of the same resolution, or use the same input size for both rows"
        )
    if front.layout == "tokens" and end.layout == "nhwc" or front.layout == "nhwc" and end.layout == "tokens":
        raise ConfigError(f"stitch layer {name!r} joins {front} to {end}: token sequences and NHWC grids do not mix")
    return front.layout, end.layout


def make_stitch(spec: StitchSpec) -> nn.Module:
    """The module of a stitch layer (its weights are random; an initializer sets them);
    low-rank (:mod:`stitchkit.pool.lowrank`) when ``spec.rank > 0``."""
    layer: nn.Module
    if spec.src_layout == "map":
        if spec.rank and spec.dst_layout != "map":
            raise ConfigError(
                f"stitch layer {spec.name!r}: low-rank stitch layers from a feature map into {spec.dst_layout} are "
                f"not supported; use rank 0 (a plain 1x1 convolution) for CNN -> transformer stitching"
            )
        layer = MapStitch(spec.src_width, spec.dst_width, spec.dst_layout)
    else:
        layer = nn.Linear(spec.src_width, spec.dst_width)
    if spec.rank:

        layer = low_rank(layer, spec.rank, spec.alpha)
    return layer


def weight_shape(spec: StitchSpec) -> list[int]:
    """The stored shape of the layer's ``weight``."""
    if spec.src_layout == "map":
        return [spec.dst_width, spec.src_width, 1, 1]
    return [spec.dst_width, spec.src_width]


def channels_last(features: torch.Tensor, layout: str) -> torch.Tensor:
    """Features as rows of channels ``(positions, C)``: one row per token or per pixel."""
    if layout == "map":
        features = features.movedim(1, -1)
    return features.reshape(-1, features.shape[-1])


def set_affine(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a ``(dst, src)`` weight and a bias into a stitch layer of any kind, in place."""
    w: torch.Tensor = getattr(layer, "weight")
    b: torch.Tensor = getattr(layer, "bias")
    with torch.no_grad():
        w.copy_(weight.reshape(w.shape).to(w.device, w.dtype))
        b.copy_(bias.to(b.device, b.dtype))


def affine_weight(layer: nn.Module) -> torch.Tensor:
    """The stitch layer's weight as a ``(dst, src)`` matrix, whatever its kind."""
    w: torch.Tensor = getattr(layer, "weight")
    return w.reshape(w.shape[0], w.shape[1])
