"""Ancestry adapter for timm's ConvNeXt (``convnext_tiny`` .. ``convnext_large``, any depths and widths).

Blocks are numbered across the four stages (ConvNeXt-T: 3 + 3 + 9 + 3 = 18);
between blocks the features are maps ``(B, C, H, W)`` (stitch layers: 1x1
convolutions). A stage's downsampling layer (norm + 2x2 strided conv) runs
with its first block (:class:`~stitchkit.families.timm_base.StageEntry`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.convnext import ConvNeXt
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import RowShape
from .weights import create_timm_model
from .timm_base import build_network, StagedAdapter, check_kwargs, parts_in_order, planning_size, stage_blocks

_ARCH_KEYS = {
    "in_chans", "num_classes", "img_size", "global_pool", "depths", "dims", "kernel_sizes", "ls_init_value",
    "patch_size", "conv_mlp", "conv_bias", "use_grn", "drop_rate", "drop_path_rate", "timm_name",
}


class TimmConvNeXt(StagedAdapter):
    """timm ``ConvNeXt`` (patchify stem, depthwise 7x7 blocks with layer scale)."""

    name = "timm-convnext"
    stem_keys = ("stem.",)
    head_keys = ("head.", "norm_pre.")
    network = "ConvNeXt"
    feature_layout = "map"
    model: Any  # the timm network (typed loosely: timm modules expose untyped attributes)
    timm_name: str

    def __init__(self, model: Any, img_size: int | tuple[int, int] | list[int] = 224) -> None:
        if not isinstance(model, ConvNeXt):
            raise ConfigError(f"the timm-convnext adapter needs a timm ConvNeXt, got {type(model).__name__}")
        super().__init__(
            model, [stage_blocks(stage) for stage in model.stages],
            stem=parts_in_order(model, "stem"),  # the patchify stem (strided conv + norm)
            head=parts_in_order(model, "norm_pre", "head"),  # norm_pre (identity in standard ConvNeXts), timm's head
        )
        self._img_size = planning_size(img_size)

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> TimmConvNeXt:
        check_kwargs(dict(arch), _ARCH_KEYS, "timm-convnext")
        kwargs = {k: v for k, v in arch.items() if k not in ("timm_name", "img_size")}
        for key in ("depths", "dims", "kernel_sizes"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        model = build_network(ConvNeXt, arch, **kwargs)
        adapter = cls(model, arch.get("img_size", 224))
        if arch.get("timm_name"):
            adapter.timm_name = arch["timm_name"]
        return adapter

    @classmethod
    def example(cls, **context: Any) -> TimmConvNeXt:
        """Four stages (1, 2, 1, 1 blocks, widths 8, 8, 16, 16, patch 4, kernel 3) on 32x32 RGB images, 5 classes."""
        return cls.from_arch(
            dict(depths=[1, 2, 1, 1], dims=[8, 8, 16, 16], kernel_sizes=3, patch_size=4, num_classes=5, img_size=32,
                 ls_init_value=0.5)
        )

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | pathlib.Path | None = None, **kwargs: Any) -> TimmConvNeXt:
        """A registered timm ConvNeXt; ``img_size`` (default 224) is the adapter's planning size."""
        img_size = kwargs.pop("img_size", 224)
        model, record = create_timm_model(name, ConvNeXt, "timm-convnext", pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        adapter = cls(model, img_size)
        adapter.weights_record = record
        adapter.timm_name = name
        return adapter


    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """timm's ``convnext_tiny`` entry point with every ConvNeXt argument from the arch (``img_size`` is the adapter's)."""
        return "convnext_tiny", {k: v for k, v in arch.items() if k not in ("timm_name", "img_size")}

    def arch(self) -> dict[str, Any]:
        m = self.model
        first = m.stages[0].blocks[0]
        stem_conv = m.stem[0]
        gamma = getattr(first, "gamma", None)
        arch: dict[str, Any] = {
            "in_chans": int(stem_conv.in_channels),
            "num_classes": int(m.num_classes),
            "img_size": list(self._img_size),
            "global_pool": m.head.global_pool.pool_type,
            "depths": [len(st.blocks) for st in m.stages],
            "dims": [int(st.blocks[0].conv_dw.out_channels) for st in m.stages],
            "kernel_sizes": [int(st.blocks[0].conv_dw.kernel_size[0]) for st in m.stages],
            "patch_size": int(stem_conv.kernel_size[0]),
            "conv_bias": first.conv_dw.bias is not None,
            "use_grn": not isinstance(first.mlp.norm, nn.Identity) if hasattr(first.mlp, "norm") else False,
            "conv_mlp": bool(first.use_conv_mlp),
        }
        last: Any = getattr(m.stages[-1].blocks[-1], "drop_path", None)
        rate = float(getattr(last, "drop_prob", 0.0))  # timm's stochastic depth reaches the rate at the last block
        if rate:
            arch["drop_path_rate"] = float(f"{rate:.6g}")
        if gamma is None:
            arch["ls_init_value"] = None
        elif gamma.device.type != "meta":
            arch["ls_init_value"] = float(f"{float(gamma.detach().flatten()[0]):.6g}")
        name = getattr(self, "timm_name", None)
        if name:
            arch["timm_name"] = name
        return arch

    def resized(self, shape: RowShape) -> dict[str, Any]:
        stages = shape.stage_shapes
        if any(h for _, _, h in stages):
            raise ConfigError(f"a timm-convnext row has no attention heads, e.g. 3x96/3x192/9x384/3x768; got {shape}")
        arch = self.arch()
        arch.pop("timm_name", None)
        ks = arch["kernel_sizes"]
        arch.update(
            depths=[d for d, _, _ in stages], dims=[w for _, w, _ in stages],
            kernel_sizes=(ks[: len(stages)] + ks[-1:] * (len(stages) - len(ks))),
        )
        return arch

    @property
    def shape(self) -> RowShape:
        return RowShape.staged([(len(st.blocks), int(st.blocks[0].conv_dw.out_channels), 0) for st in self.model.stages])

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (int(self.model.stem[0].in_channels), *self._img_size)

