"""Low-rank stitch layers: a frozen base weight plus a trainable rank-``r`` update (SN-Netv2's LoRA).

An initializer (least squares, TM, random) sets the base weight; training
then moves only the update ``scale * B @ A`` (``A`` Kaiming-initialised,
``B`` zero, ``scale = alpha / rank``, as the official ``lora.Linear``) and
the bias. Every forward runs the layer with the *merged* weight
``weight + scale * B @ A``: one matmul of the base layer's size per token,
the same numbers an exported (merged) layer gives, and a cost per call (not
per token) for forming the update. :func:`merged` turns a low-rank layer
into the plain layer an exported descendant holds, so it costs nothing extra.

The classes subclass ``nn.Linear`` and ``nn.Conv2d`` (for 1x1 stitches
between feature maps) rather than wrapping them, so state-dict keys stay
``weight`` and ``bias`` (plus ``lora_A``, ``lora_B``), initializers write
``layer.weight`` as for any stitch layer, and MAC counters see a linear or
convolution layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import StitchSpec


def check_rank(rank: int, stitches: Sequence[StitchSpec], where: str = "stitch_rank") -> list[str]:
    """Refuse a rank above a stitch layer's smaller width; return a note for each width it does not go below.

    A ``d_in -> d_out`` layer has rank at most ``min(d_in, d_out)``: a larger
    update trains ``rank * (d_in + d_out)`` parameters that can express
    nothing more (1000 on 64-wide layers: 1.36M parameters where full rank
    stores 0.40M). At exactly the smaller width the update is full rank and
    saves nothing over a plain layer, which is allowed but noted.
    """
    if not rank:
        return []
    if rank < 0:
        raise ConfigError(f"{where} must be >= 0 (0: full-rank stitch layers), got {rank}")
    smallest = min(stitches, key=lambda s: min(s.src_width, s.dst_width), default=None)
    if smallest is not None and rank > min(smallest.src_width, smallest.dst_width):
        bound = min(smallest.src_width, smallest.dst_width)
        raise ConfigError(
            f"{where} = {rank} is above the rank of stitch layer {smallest.name} ({smallest.src_width} -> "
            f"{smallest.dst_width} channels, at most {bound}); use at most {bound}, or 0 for full-rank layers"
        )
    full = [s.name for s in stitches if rank == min(s.src_width, s.dst_width)]
    if not full:
        return []
    return [f"{where} = {rank} is the full rank of {len(full)} stitch layer(s) (e.g. {full[0]}): their low-rank update "
            "saves nothing over a plain layer; a smaller rank trains fewer parameters"]


class LowRankMixin:
    """The low-rank update shared by :class:`LowRankLinear` and :class:`LowRankConv2d`."""

    weight: torch.Tensor
    rank: int
    alpha: float

    def _add_low_rank(self, rank: int, alpha: float) -> None:
        if rank < 1:
            raise ConfigError(f"a low-rank stitch layer needs rank >= 1, got {rank}")
        if not alpha > 0:
            raise ConfigError(f"a low-rank stitch layer needs alpha > 0, got {alpha}")
        w = self.weight
        fan_in = w[0].numel()
        self.rank, self.alpha = int(rank), float(alpha)
        self.lora_A = nn.Parameter(torch.empty((rank, fan_in), device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty((w.shape[0], rank), device=w.device, dtype=w.dtype))
        self.weight.requires_grad_(False)
        self._reset_low_rank()

    def _reset_low_rank(self) -> None:
        # A as nn.Linear's default weight init, B zero: the update starts at zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        """``scale * B @ A`` in the base weight's shape."""
        return (self.lora_B @ self.lora_A).view(self.weight.shape) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # type: ignore[misc]
        if "lora_A" in self._parameters:  # type: ignore[attr-defined]
            self._reset_low_rank()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"  # type: ignore[misc]


class LowRankLinear(LowRankMixin, nn.Linear):
    """``nn.Linear`` whose frozen weight gets a trainable rank-``rank`` update."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 1.0, bias: bool = True, **kw: Any) -> None:
        super().__init__(in_features, out_features, bias=bias, **kw)
        self._add_low_rank(rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.merged_weight(), self.bias)


class LowRankConv2d(LowRankMixin, nn.Conv2d):
    """``nn.Conv2d`` (ungrouped) whose frozen weight gets a trainable rank-``rank`` update."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, rank: int, alpha: float = 1.0, **kw: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kw)
        if self.groups != 1:
            raise ConfigError(f"a low-rank convolution needs groups = 1, got {self.groups}")
        self._add_low_rank(rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.merged_weight(), self.bias)


def low_rank(layer: nn.Module, rank: int, alpha: float = 1.0) -> nn.Module:
    """``layer`` (``nn.Linear`` or ``nn.Conv2d``) as a low-rank layer sharing its weight and bias objects.

    The weight becomes the frozen base; the returned layer computes exactly
    what ``layer`` did until the update is trained (``B`` starts at zero).
    """
    if isinstance(layer, LowRankMixin):
        raise ConfigError("this stitch layer is low-rank already")
    with torch.device("meta"):  # placeholders only: the layer's own parameters are put in below
        if isinstance(layer, nn.Linear):
            new: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            new.__class__ = LowRankLinear
        elif isinstance(layer, nn.Conv2d):
            new = nn.Conv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,  # type: ignore[arg-type]
                layer.padding, layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,  # type: ignore[arg-type]
            )
            if layer.groups != 1:
                raise ConfigError(f"a low-rank convolution needs groups = 1, got {layer.groups}")
            new.__class__ = LowRankConv2d
        else:
            raise ConfigError(f"low-rank stitch layers wrap nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    new.weight = layer.weight  # type: ignore[assignment]
    new.bias = layer.bias  # type: ignore[assignment]
    new._add_low_rank(rank, alpha)  # type: ignore[operator]
    new.train(layer.training)
    return new


def merged(layer: nn.Module) -> nn.Module:
    """The plain ``nn.Linear`` / ``nn.Conv2d`` a low-rank layer computes (other modules as they are)."""
    if not isinstance(layer, LowRankMixin):
        return layer
    with torch.device("meta"):
        if isinstance(layer, nn.Linear):
            plain: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        else:
            conv: nn.Conv2d = layer  # type: ignore[assignment]
            plain = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                conv.padding, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,  # type: ignore[arg-type]
            )
    with torch.no_grad():
        plain.weight = nn.Parameter(layer.merged_weight().detach().clone(), requires_grad=True)
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor):
            plain.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
    plain.train(layer.training)
    return plain


def merge_low_rank(module: nn.Module) -> nn.Module:
    """Replace, in place, every low-rank layer inside ``module`` by its merged plain layer; return ``module``."""
    if isinstance(module, LowRankMixin):
        return merged(module)
    for name, child in list(module.named_children()):
        new = merge_low_rank(child)
        if new is not child:
            setattr(module, name, new)
    return module


def low_rank_params(module: nn.Module) -> int:
    """Parameters of the low-rank updates inside ``module`` (what merging removes), each counted once."""
    seen: set[int] = set()
    total = 0
    for m in module.modules():
        if isinstance(m, LowRankMixin):
            for p in (m.lora_A, m.lora_B):
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total
