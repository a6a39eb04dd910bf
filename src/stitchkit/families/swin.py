"""Ancestry adapter for timm's Swin Transformer (``swin_tiny_patch4_window7_224`` and family).

Blocks are numbered across the four stages (Swin-T: 2 + 2 + 6 + 2 = 12);
between blocks the features are channels-last grids ``(B, H, W, C)``
(timm's layout), so stitch layers between Swin rows are ``nn.Linear`` on
the channels, as in the official ``stitching_swin`` code. A stage's patch
merging runs with its first block (:class:`~stitchkit.families.timm_base.StageEntry`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import RowShape
from .weights import create_timm_model
from .timm_base import (
    build_network, StagedAdapter, StageEntry, check_kwargs, on_meta, parts_in_order, restore_timm_buffers, stage_blocks,
)

_ARCH_KEYS = {
    "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depths", "num_heads",
    "window_size", "mlp_ratio", "qkv_bias", "drop_path_rate", "timm_name",
}


class TimmSwin(StagedAdapter):
    """timm ``SwinTransformer`` (Swin-T/S/B/L of any depths, widths, heads, window and image size)."""

    name = "timm-swin"
    stem_keys = ("patch_embed.",)
    head_keys = ("norm.", "head.")
    stages_key = "layers."
    network = "SwinTransformer"
    feature_layout = "nhwc"
    model: Any  # the timm network (typed loosely: timm modules expose untyped attributes)
    timm_name: str

    def __init__(self, model: Any) -> None:
        if not isinstance(model, SwinTransformer):
            raise ConfigError(f"the timm-swin adapter needs a timm SwinTransformer, got {type(model).__name__}")
        super().__init__(
            model, [stage_blocks(stage) for stage in model.layers],
            stem=parts_in_order(model, "patch_embed"),  # images to a (B, H, W, C) grid
            head=parts_in_order(model, "norm", "head"),  # final norm, pooling over the grid, classifier
        )

    # -- construction -------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> TimmSwin:
        check_kwargs(dict(arch), _ARCH_KEYS, "timm-swin")
        kwargs = {k: v for k, v in arch.items() if k != "timm_name"}
        for key in ("img_size", "depths", "num_heads"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("window_size"), list):
            kwargs["window_size"] = tuple(tuple(w) if isinstance(w, list) else w for w in kwargs["window_size"])
        heads = kwargs.get("num_heads")
        if isinstance(kwargs.get("embed_dim"), int) and isinstance(heads, tuple) and all(type(h) is int for h in heads):
            _check_head_dim([(1, kwargs["embed_dim"] * 2**i, h) for i, h in enumerate(kwargs["num_heads"])], f"arch {dict(arch)}")
        if on_meta():
            kwargs.setdefault("weight_init", "skip")
        model = build_network(SwinTransformer, arch, **kwargs)
        adapter = cls(model)
        if arch.get("timm_name"):
            adapter.timm_name = arch["timm_name"]
        return adapter

    @classmethod
    def example(cls, **context: Any) -> TimmSwin:
        """Two stages (1 and 2 blocks, widths 16 and 32, 2 and 4 heads, window 4) on 16x16 RGB images, 5 classes."""
        return cls.from_arch(
            dict(img_size=16, patch_size=2, in_chans=3, num_classes=5, embed_dim=16, depths=[1, 2], num_heads=[2, 4],
                 window_size=4, drop_path_rate=0.0)
        )

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | pathlib.Path | None = None, **kwargs: Any) -> TimmSwin:
        """A registered timm Swin (``pretrained`` downloads timm's weights; ``checkpoint`` loads a local file)."""
        if on_meta() and not pretrained:
            kwargs.setdefault("weight_init", "skip")
        model, record = create_timm_model(name, SwinTransformer, "timm-swin", pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        adapter = cls(model)
        adapter.weights_record = record
        adapter.timm_name = name
        return adapter


    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """timm's ``swin_tiny_patch4_window7_224`` entry point with every SwinTransformer argument from the arch."""
        return "swin_tiny_patch4_window7_224", {k: v for k, v in arch.items() if k != "timm_name"}

    def arch(self) -> dict[str, Any]:
        m = self.model
        first = m.layers[0].blocks[0]
        last = m.layers[-1].blocks[-1]
        drop = getattr(last.drop_path1, "drop_prob", 0.0)
        arch: dict[str, Any] = {
            "img_size": list(m.patch_embed.img_size),
            "patch_size": int(m.patch_embed.patch_size[0]),
            "in_chans": int(m.in_chans),
            "num_classes": int(m.num_classes),
            "global_pool": m.global_pool,
            "embed_dim": int(m.embed_dim),
            "depths": [len(st.blocks) for st in m.layers],
            "num_heads": [int(st.blocks[0].attn.num_heads) for st in m.layers],
            "window_size": [list(w) for w in m._ref_window_sizes],
            "mlp_ratio": first.mlp.fc1.out_features / first.mlp.fc1.in_features,
            "qkv_bias": first.attn.qkv.bias is not None,
            "drop_path_rate": float(f"{float(drop):.6g}"),  # stored as float32 by timm
        }
        name = getattr(self, "timm_name", None)
        if name:
            arch["timm_name"] = name
        return arch

    def resized(self, shape: RowShape) -> dict[str, Any]:
        stages = shape.stage_shapes
        base = stages[0][1]
        if any(w != base * 2**i for i, (_, w, _) in enumerate(stages)) or any(h < 1 for _, _, h in stages):
            raise ConfigError(
                f"a timm-swin row doubles its width every stage and has heads in each, e.g. "
                f"2x96:3/2x192:6/6x384:12/2x768:24; got {shape}"
            )
        _check_head_dim(stages, f"row {shape}")
        arch = self.arch()
        arch.pop("timm_name", None)
        n = len(stages)
        windows = arch["window_size"]
        arch.update(
            embed_dim=base, depths=[d for d, _, _ in stages], num_heads=[h for _, _, h in stages],
            window_size=windows[:n] + windows[-1:] * (n - len(windows)),
        )
        return arch

    # -- structure ------------------------------------------------------------
    @property
    def shape(self) -> RowShape:
        return RowShape.staged(
            [(len(st.blocks), int(st.blocks[0].attn.qkv.in_features), int(st.blocks[0].attn.num_heads)) for st in self.model.layers]
        )

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (int(self.model.in_chans), *(int(v) for v in self.model.patch_embed.img_size))  # type: ignore[return-value]

    def restore_buffers(self, module: nn.Module) -> None:
        """Relative position indices and shifted-window masks are not in timm's state dict."""
        restore_timm_buffers(module)

    def published_exclusions(self) -> tuple[str, ...]:
        """The official ``stitching_swin`` size count (``get_model_size_util``) leaves out the front
        anchor's patch-merging layers: Swin-T -> Swin-S stitched in stage 2 is 370,944 parameters
        fewer there than the modules it runs."""
        return tuple(k for k in self.model.state_dict() if ".downsample." in k)

    def uncounted_macs(self) -> dict[nn.Module, Any]:
        """q @ k^T and attn @ v inside every window: ``2 * windows * N^2 * attn_dim`` per image."""
        attns = [getattr(b.block if isinstance(b, StageEntry) else b, "attn", None) for b in self._blocks]
        return {a: _window_attention_macs for a in attns if a is not None}


def _check_head_dim(stages: "list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]", where: str) -> None:
    """The Swin's rule, not the core's: a stage splits its width into equal heads (timm would otherwise
    silently narrow the attention to ``heads * (width // heads)`` channels, a network no Swin checkpoint has)."""
    for i, (_, w, h) in enumerate(stages):
        if h and w % h:
            raise ConfigError(
                f"timm-swin {where}: stage {i} is {w} wide with {h} heads; a Swin stage splits its width into equal "
                f"heads (head_dim = width / heads), so choose heads that divide it (e.g. 2x96:3/2x192:6/6x384:12/2x768:24)"
            )


def _window_attention_macs(m: Any, inputs: tuple[Any, ...], _out: Any) -> int:
    windows, n, _ = inputs[0].shape  # (B * windows, tokens per window, C)
    return 2 * windows * n * n * (m.qkv.out_features // 3)
