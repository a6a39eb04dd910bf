"""Ancestry adapter for timm's ResNet (basic blocks: ResNet-18/34; bottlenecks: ResNet-50/101/152).

Blocks are the residual blocks of ``layer1`` .. ``layer4``, numbered across
stages (ResNet-50: 3 + 4 + 6 + 3 = 16); between blocks the features are maps
``(B, C, H, W)``, so stitch layers from a ResNet are 1x1 convolutions, as in
the official ``stitching_resnet_swin`` code. The first block of a stage
holds its own strided shortcut (timm's ``downsample``), so no stage-level
layer sits between blocks. A ResNet takes any image size; the adapter keeps
the one it is planned and measured at in its arch (``img_size``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import RowShape
from .weights import create_timm_model
from .timm_base import build_network, StagedAdapter, check_kwargs, parts_in_order, planning_size

_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
_ARCH_KEYS = {
    "block", "layers", "channels", "num_classes", "in_chans", "img_size", "stem_width", "stem_type", "avg_down",
    "cardinality", "base_width", "global_pool", "drop_rate", "drop_path_rate", "timm_name",
}


class ResNetHead(nn.Module):
    """Global pooling, dropout and the classifier ``fc``."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.global_pool, self.fc = model.global_pool, model.fc
        self.drop_rate = float(model.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)


def _first_conv(conv1: Any) -> Any:
    """The stem's first convolution (a deep stem is a Sequential)."""
    return conv1[0] if isinstance(conv1, nn.Sequential) else conv1


def _stages(model: Any) -> list[Any]:
    stages: list[Any] = []
    i = 1
    while hasattr(model, f"layer{i}"):
        stages.append(getattr(model, f"layer{i}"))
        i += 1
    return stages


class TimmResNet(StagedAdapter):
    """timm ``ResNet`` with basic or bottleneck blocks (ResNet-18/34/50/101/152 and any stage depths and widths)."""

    name = "timm-resnet"
    feature_layout = "map"
    model: Any  # the timm network (typed loosely: timm modules expose untyped attributes)
    timm_name: str

    def __init__(self, model: Any, img_size: int | tuple[int, int] | list[int] = 224) -> None:
        if not isinstance(model, ResNet):
            raise ConfigError(f"the timm-resnet adapter needs a timm ResNet, got {type(model).__name__}")
        super().__init__(
            model, [list(stage) for stage in _stages(model)],
            stem=parts_in_order(model, "conv1", "bn1", "act1", "maxpool"),  # images to the map layer1 takes
            head=ResNetHead(model),
        )
        kinds = {type(b) for b in self._blocks}
        if not kinds <= {BasicBlock, Bottleneck}:
            raise ConfigError(f"timm-resnet takes basic or bottleneck blocks, got {sorted(k.__name__ for k in kinds)}")
        if len(kinds) > 1:  # its arch records one block type: a mix would not rebuild as itself
            raise ConfigError(f"timm-resnet takes one block type in every stage, got a mix of {sorted(k.__name__ for k in kinds)}")
        self._img_size = planning_size(img_size)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> TimmResNet:
        check_kwargs(dict(arch), _ARCH_KEYS, "timm-resnet")
        kwargs = {k: v for k, v in arch.items() if k not in ("timm_name", "img_size")}
        try:
            kwargs["block"] = _BLOCKS[kwargs.get("block", "basic")]
        except KeyError:
            raise ConfigError(f"timm-resnet block must be one of {sorted(_BLOCKS)}, got {arch.get('block')!r}") from None
        for key in ("layers", "channels"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if len(kwargs.get("layers", ())) != 4 or len(kwargs.get("channels", (0,) * 4)) != 4:
            raise ConfigError(f"a timm ResNet has four stages: arch layers and channels need 4 entries, got {dict(arch)}")
        model = build_network(ResNet, arch, **kwargs)
        adapter = cls(model, arch.get("img_size", 224))
        if arch.get("timm_name"):
            adapter.timm_name = arch["timm_name"]
        return adapter

    @classmethod
    def example(cls, **context: Any) -> TimmResNet:
        """Basic blocks, four stages of 1, 2, 1, 1 blocks at widths 4, 8, 8, 16, stem 4, on 16x16 RGB images, 5 classes."""
        return cls.from_arch(
            dict(block="basic", layers=[1, 2, 1, 1], channels=[4, 8, 8, 16], stem_width=4, num_classes=5, img_size=16)
        )

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | pathlib.Path | None = None, **kwargs: Any) -> TimmResNet:
        """A registered timm ResNet (``pretrained`` downloads timm's weights; ``checkpoint`` loads a local file).
        ``img_size`` (the input size it is planned at, default 224) is the adapter's, not timm's."""
        img_size = kwargs.pop("img_size", 224)
        model, record = create_timm_model(name, ResNet, "timm-resnet", pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        adapter = cls(model, img_size)
        adapter.weights_record = record
        adapter.timm_name = name
        return adapter


    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """timm's ``resnet18`` (basic) or ``resnet50`` (bottleneck) entry point, which sets the block class;
        every other ResNet argument from the arch (``img_size`` is the adapter's)."""
        entry = {"basic": "resnet18", "bottleneck": "resnet50"}
        block = arch.get("block", "basic")
        if block not in entry:
            raise ConfigError(f"timm-resnet block must be one of {sorted(entry)}, got {block!r}")
        return entry[block], {k: v for k, v in arch.items() if k not in ("timm_name", "img_size", "block")}

    def arch(self) -> dict[str, Any]:
        m = self.model
        first: Any = self._blocks[0]
        kind = "bottleneck" if isinstance(first, Bottleneck) else "basic"
        expansion = _BLOCKS[kind].expansion  # type: ignore[attr-defined]
        stages = _stages(m)
        conv1: Any = m.conv1
        if isinstance(conv1, nn.Sequential):
            convs = [c for c in conv1 if isinstance(c, nn.Conv2d)]
            stem_type = "deep" if convs[0].out_channels == convs[1].out_channels else "deep_tiered"
            stem_width = convs[1].out_channels
        else:
            stem_type, stem_width = "", conv1.out_channels
        planes = [st[0].conv1.out_channels if kind == "basic" else st[-1].conv3.out_channels // expansion for st in stages]
        arch: dict[str, Any] = {
            "block": kind,
            "layers": [len(st) for st in stages],
            "channels": [int(p) for p in planes],
            "num_classes": int(m.num_classes),
            "in_chans": int(_first_conv(conv1).in_channels),
            "img_size": list(self._img_size),
            "stem_width": int(stem_width),
            "stem_type": stem_type,
            "global_pool": m.global_pool.pool_type,
            "drop_rate": float(m.drop_rate),
        }
        if len(stages) > 1 and stages[1][0].downsample is not None and isinstance(stages[1][0].downsample[0], nn.AvgPool2d):
            arch["avg_down"] = True
        if kind == "bottleneck":
            groups = int(first.conv2.groups)
            if groups != 1 or first.conv1.out_channels != planes[0]:
                arch["cardinality"] = groups
                arch["base_width"] = int(first.conv1.out_channels * 64 // (planes[0] * groups))
        last: Any = getattr(self._blocks[-1], "drop_path", None)
        if last is not None and getattr(last, "drop_prob", None):
            arch["drop_path_rate"] = float(f"{float(last.drop_prob):.6g}")
        name = getattr(self, "timm_name", None)
        if name:
            arch["timm_name"] = name
        return arch

    def resized(self, shape: RowShape) -> dict[str, Any]:
        arch = self.arch()
        arch.pop("timm_name", None)
        expansion = _BLOCKS[arch["block"]].expansion  # type: ignore[attr-defined]
        stages = shape.stage_shapes
        if any(h for _, _, h in stages) or any(w % expansion for _, w, _ in stages):
            raise ConfigError(
                f"a timm-resnet row has no attention heads and stage widths divisible by {expansion} "
                f"({arch['block']} blocks), e.g. {'2x64/2x128/2x256/2x512' if expansion == 1 else '3x256/4x512/6x1024/3x2048'}; "
                f"got {shape}"
            )
        arch.update(layers=[d for d, _, _ in stages], channels=[w // expansion for _, w, _ in stages])
        return arch

    # -- structure ------------------------------------------------------------
    @property
    def shape(self) -> RowShape:
        widths = []
        for st in _stages(self.model):
            last: Any = st[-1]
            widths.append(int((last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels))
        return RowShape.staged([(len(st), w, 0) for st, w in zip(_stages(self.model), widths)])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (int(_first_conv(self.model.conv1).in_channels), *self._img_size)

    def part_of(self, param_name: str) -> tuple[str, int | None]:
        if param_name.startswith(("conv1.", "bn1.")):
            return "stem", None
        if param_name.startswith("fc."):
            return "head", None
        if param_name.startswith("layer"):
            s, rest = param_name[len("layer"):].split(".", 1)
            return "block", self._starts[int(s) - 1] + int(rest.split(".", 1)[0])
        raise ConfigError(f"timm-resnet: state-dict key {param_name!r} belongs to no part of a ResNet")


__all__ = ["TimmResNet"]
