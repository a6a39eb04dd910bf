"""The core's ancestry adapter: timm's VisionTransformer (DeiT / ViT of any shape).

``ViTStem`` and ``ViTHead`` hold the *same* parameter objects as the model
and run timm's own ``_pos_embed`` and ``pool`` code, so a descendant built
from them computes exactly what the row would.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..core.errors import ConfigError, StitchkitError
from ..core.interfaces import AncestryAdapter
from .timm_base import build_network
from ..core.spec import FeatureSignature, RowShape


class ViTStem(nn.Module):
    """Patch embedding, class/register tokens, position embedding, pre-norm."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.reg_token = model.reg_token
        self.pos_embed = model.pos_embed
        self.pos_drop = model.pos_drop
        self.patch_drop = model.patch_drop
        self.norm_pre = model.norm_pre
        self.dynamic_img_size = model.dynamic_img_size
        self.no_embed_class = model.no_embed_class
        self.num_prefix_tokens = model.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = VisionTransformer._pos_embed(self, x)  # type: ignore[arg-type]
        x = self.patch_drop(x)
        return self.norm_pre(x)


class ViTHead(nn.Module):
    """Final norm, token pooling, fc-norm and the classifier.

    ``final_norm=False`` keeps the norm's parameters but skips it, as the
    official SN-Net code's stitched forward does (``forward_head`` only).
    """

    def __init__(self, model: VisionTransformer, final_norm: bool = True) -> None:
        super().__init__()
        self.final_norm = final_norm
        self.norm = model.norm
        self.attn_pool = model.attn_pool
        self.fc_norm = model.fc_norm
        self.head_drop = model.head_drop
        self.head = model.head
        self.global_pool = model.global_pool
        self.num_prefix_tokens = model.num_prefix_tokens
        self.pool_include_prefix = getattr(model, "pool_include_prefix", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.final_norm:
            x = self.norm(x)
        x = VisionTransformer.pool(self, x)  # type: ignore[arg-type]
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


_HEAD_PREFIXES = ("norm.", "fc_norm.", "head.", "attn_pool.")


class TimmViT(AncestryAdapter):
    """timm ``VisionTransformer``: DeiT and ViT of any width, depth, heads, patch and image size."""

    name = "timm-vit"
    #: The wrapped ``VisionTransformer``; ``Any`` because timm builds its submodules dynamically.
    model: Any
    #: The timm model name it was created from, if any (kept in :meth:`arch`).
    timm_name: str = ""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, VisionTransformer):
            raise ConfigError(
                f"the timm-vit adapter needs a timm VisionTransformer, got {type(model).__name__}"
            )
        if getattr(model, "dist_token", None) is not None or getattr(model, "attn_pool", None) is not None:
            raise ConfigError(
                "distilled (dist_token) and attention-pooled ViTs are not supported by timm-vit; "
                "use the plain (non-distilled) model, e.g. deit_base_patch16_224"
            )
        super().__init__(model)
        self._stem: ViTStem | None = None
        self._head: ViTHead | None = None

    # -- construction -------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> TimmViT:
        kwargs = {k: v for k, v in arch.items() if k not in ("timm_name",)}
        width, heads = kwargs.get("embed_dim", 768), kwargs.get("num_heads", 12)
        if isinstance(width, int) and isinstance(heads, int) and heads > 0:
            check_head_dim(width, heads, f"arch {dict(arch)}")
        for key in ("img_size", "patch_size"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if _on_meta():
            kwargs.setdefault("weight_init", "skip")  # no values to initialise; timm's init is slow on meta
        model = build_network(VisionTransformer, arch, **kwargs)
        _check_grid(model, "arch")
        adapter = cls(model)
        if arch.get("timm_name"):  # keep the identity, so from_arch(arch()) round-trips
            adapter.timm_name = arch["timm_name"]
        return adapter

    @classmethod
    def example(cls, **context: Any) -> TimmViT:
        """A 3-block, width-32, 4-head ViT on 16x16 RGB images (patch 4, 5 classes), for :mod:`stitchkit.testing`."""
        return cls.from_arch(
            dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=3, num_heads=4)
        )

    @classmethod
    def from_timm(
        cls,
        name: str,
        *,
        pretrained: bool = False,
        checkpoint: str | pathlib.Path | None = None,
        **kwargs: Any,
    ) -> TimmViT:
        """Create a registered timm model (``pretrained`` downloads timm's weights),
        optionally loading a local checkpoint file (safetensors, or a ``.pth``
        read with ``weights_only=True``)."""
        from .weights import create_timm_model

        if _on_meta() and not pretrained and checkpoint is None:
            kwargs.setdefault("weight_init", "skip")
        try:
            model, record = create_timm_model(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        except StitchkitError:
            raise
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:  # unknown name; kwargs another family refuses
            raise ConfigError(f"timm could not create {name!r} as a VisionTransformer for the timm-vit adapter: {exc}") from exc
        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"{name!r} is a timm {type(model).__name__}, not a VisionTransformer; the timm-vit adapter needs a ViT (deit_*, vit_*)")
        _check_grid(model, name)
        adapter = cls(model)
        adapter.weights_record = record
        adapter.timm_name = name
        return adapter

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | None = None, **kwargs: Any) -> TimmViT:
        return cls.from_timm(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)

    def load_checkpoint(self, path: str | pathlib.Path) -> None:
        """Load weights from a local file into the model; they must fit it exactly."""
        from ..io.state_dicts import load_strict

        load_strict(self.model, path, f"a ViT of shape {self.shape}",
                    "save the file from a model of this arch, or give its timm_name so timm adapts it")


    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """timm's ``vit_tiny_patch16_224`` entry point with every VisionTransformer argument from the arch."""
        return "vit_tiny_patch16_224", {k: v for k, v in arch.items() if k != "timm_name"}

    def arch(self) -> dict[str, Any]:
        m = self.model
        blk = m.blocks[0] if len(m.blocks) else None
        arch: dict[str, Any] = {
            "img_size": list(m.patch_embed.img_size),
            "patch_size": list(m.patch_embed.patch_size),
            "in_chans": m.patch_embed.proj.in_channels,
            "num_classes": m.num_classes,
            "embed_dim": m.embed_dim,
            "depth": len(m.blocks),
            "num_heads": blk.attn.num_heads if blk is not None else 1,
            "mlp_ratio": blk.mlp.fc1.out_features / m.embed_dim if blk is not None else 4.0,
            "qkv_bias": bool(blk is not None and blk.attn.qkv.bias is not None),
            "class_token": m.cls_token is not None,
            "reg_tokens": int(m.num_reg_tokens),
            "no_embed_class": bool(m.no_embed_class),
            "global_pool": m.global_pool,
            "pre_norm": not isinstance(m.norm_pre, nn.Identity),
            "fc_norm": not isinstance(m.fc_norm, nn.Identity),
        }
        if blk is not None and isinstance(blk.ls1, LayerScale):
            arch["init_values"] = float(blk.ls1.gamma.detach().flatten()[0]) if blk.ls1.gamma.device.type != "meta" else 1e-5
        if blk is not None and not isinstance(blk.attn.q_norm, nn.Identity):
            arch["qk_norm"] = True
        last: Any = getattr(m.blocks[-1], "drop_path1", None) if len(m.blocks) else None
        rate = float(getattr(last, "drop_prob", 0.0))  # timm's stochastic depth rises linearly to the rate at the last block
        if rate:
            arch["drop_path_rate"] = float(f"{rate:.6g}")
        name = getattr(self, "timm_name", None)
        if name:
            arch["timm_name"] = name
        return arch

    def resized(self, shape: RowShape) -> dict[str, Any]:
        if shape.stages or shape.heads < 1:
            raise ConfigError(
                f"a timm-vit row is one stage with attention heads, DEPTHxWIDTH:HEADS (e.g. 6x192:3); got {shape}"
            )
        check_head_dim(shape.width, shape.heads, f"row {shape}")
        arch = self.arch()
        arch.pop("timm_name", None)
        arch.update(depth=shape.depth, embed_dim=shape.width, num_heads=shape.heads)
        return arch

    # -- structure ------------------------------------------------------------
    @property
    def shape(self) -> RowShape:
        m = self.model
        heads = m.blocks[0].attn.num_heads if len(m.blocks) else 1
        return RowShape(len(m.blocks), m.embed_dim, heads)

    @property
    def blocks(self) -> nn.ModuleList:
        blocks = self.model.blocks
        if isinstance(blocks, nn.Sequential):
            # timm keeps blocks in an nn.Sequential; index access works the same.
            return blocks  # type: ignore[return-value]
        return blocks

    def stem(self) -> nn.Module:
        if self._stem is None:
            self._stem = ViTStem(self.model)
        return self._stem

    def head(self) -> nn.Module:
        if self._head is None:
            self._head = ViTHead(self.model)
        return self._head

    def head_without_norm(self) -> nn.Module:
        return ViTHead(self.model, final_norm=False)

    def attention(self, index: int) -> nn.Module:
        return self.model.blocks[index].attn

    def part_of(self, param_name: str) -> tuple[str, int | None]:
        if param_name.startswith("blocks."):
            return "block", int(param_name.split(".")[1])
        if param_name.startswith(_HEAD_PREFIXES):
            return "head", None
        return "stem", None

    def signatures(self) -> list[FeatureSignature]:
        """Every boundary of a plain ViT carries the same tokens: patches plus prefix tokens, at the width.

        Read off the model instead of the base class's meta-device forward pass,
        because every pool built or loaded asks for them (a 12-block DeiT-B's
        forward on the meta device costs about 15 ms).
        """
        m = self.model
        sig = FeatureSignature("tokens", int(m.embed_dim), (int(m.patch_embed.num_patches) + int(m.num_prefix_tokens),))
        return [sig] * (len(m.blocks) + 1)

    @property
    def input_size(self) -> tuple[int, int, int]:
        pe = self.model.patch_embed
        return (pe.proj.in_channels, *pe.img_size)

    def uncounted_macs(self) -> dict[nn.Module, Any]:
        """q @ k^T and attn @ v of every block: ``2 * N^2 * heads * head_dim`` per image."""
        return {blk.attn: _attention_macs for blk in self.model.blocks if hasattr(blk, "attn")}

    def published_exclusions(self) -> tuple[str, ...]:
        """SN-Net counts a stitched DeiT without its class token and position embedding."""
        return tuple(k for k in ("cls_token", "pos_embed") if getattr(self.model, k, None) is not None)


def check_head_dim(width: int, heads: int, where: str) -> None:
    """The ViT's rule, not the core's: timm's attention splits the width into ``heads`` equal heads."""
    if width % heads:
        raise ConfigError(
            f"timm-vit {where}: width {width} is not divisible by its {heads} heads; a ViT splits its width into "
            f"equal heads (head_dim = width / heads), so choose heads that divide the width (e.g. 6x192:3)"
        )


def _attention_macs(m: nn.Module, inputs: tuple[Any, ...], _out: Any) -> int:
    b, n, _ = inputs[0].shape
    return 2 * b * n * n * m.num_heads * m.head_dim


def _check_grid(model: VisionTransformer, where: str) -> None:
    """The image must split into whole patches (timm would silently drop the border, or fail at run time)."""
    pe = model.patch_embed
    if getattr(pe, "dynamic_img_pad", False) or pe.img_size is None:
        return
    for side, patch in zip(pe.img_size, pe.patch_size):
        if side % patch:
            raise ConfigError(f"{where}: image size {tuple(pe.img_size)} is not a multiple of the patch size {tuple(pe.patch_size)}; "
                              "choose an image size divisible by the patch size")


def _on_meta() -> bool:
    """True inside ``with torch.device("meta")`` (structure only: planning, lazy loading)."""
    get = getattr(torch, "get_default_device", None)
    return get is not None and get().type == "meta"
