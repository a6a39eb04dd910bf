"""Ancestry adapter for timm's LeViT (``levit_128s`` .. ``levit_512``, any stages, widths and heads).

LeViT is a hierarchical transformer on tokens ``(B, N, C)``: a convolutional
stem, then stages of attention + MLP blocks at a shrinking grid (LeViT-192:
14x14, 7x7 and 4x4 tokens), joined by an attention downsampling block
(timm's ``LevitDownsample``) that runs with the next stage's first block
(:class:`~stitchkit.families.timm_base.StageEntry`). Its heads do not split
the width: every head has the same key size (``key_dim``), so LeViT-192's
288-wide stage has 5 heads; rows are described with the true heads
(``4x192:3/4x288:5/4x384:6``). Stitch layers between LeViTs are
``nn.Linear`` on the tokens, as in the official ``stitching_levit`` code.

The attention-bias index tables are non-persistent buffers (not in the state
dict), rebuilt by :meth:`TimmLeViT.restore_buffers` after lazy loading. timm
caches the gathered attention biases in eval mode, keyed by device only: a
cached tensor outlives a weight update made in eval mode, cannot be
back-propagated through twice, and makes ``copy.deepcopy`` of a network
(the SN-Net teacher, the conformance suite) fail once it holds a graph; the
adapter makes its attentions subclasses that gather the biases from the
current weights on every call instead (one indexing per attention). The bias tables' sizes
follow the token grid, so weights saved at another image size have their
tables fitted by offset when they are loaded (:meth:`TimmLeViT.from_name`).

Only the token variants are taken; timm's ``levit_conv_*`` (the same
network on ``(B, C, H, W)`` maps) is refused with a message.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.levit import AttentionDownsample, Levit, LevitDistilled, LevitMlp, Stem8, Stem16
from timm.models.levit import Attention as LevitAttention
from torch import nn

from ..core.errors import ConfigError
from ..core.spec import FeatureSignature, RowShape
from ..io.state_dicts import read_state_dict
from .weights import create_timm_model
from .timm_base import (
    build_network, StagedAdapter, StageEntry, check_kwargs, planning_size, restore_timm_buffers, stage_blocks,
)

_ARCH_KEYS = {
    "img_size", "in_chans", "num_classes", "embed_dim", "key_dim", "depth", "num_heads", "attn_ratio", "mlp_ratio",
    "stem_type", "act_layer", "attn_act_layer", "global_pool", "drop_rate", "drop_path_rate", "distilled",
    "residual_bn_init", "timm_name",
}
#: timm activation names of the activation classes LeViTs use (``act_layer`` / ``attn_act_layer``).
_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.Hardswish: "hard_swish", nn.SiLU: "silu", nn.GELU: "gelu", nn.ReLU: "relu", nn.Hardsigmoid: "hard_sigmoid",
}


class LeViTStem(nn.Module):
    """timm's convolutional stem, its map flattened to tokens ``(B, N, C)`` as ``Levit.forward_features`` does."""

    def __init__(self, model: Levit) -> None:
        super().__init__()
        self.stem = model.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)


class LeViTHead(nn.Module):
    """Average over the tokens, then the classifier; a distilled LeViT averages its two classifiers
    (``head`` and ``head_dist``), as timm's inference and the official stitched forward do."""

    def __init__(self, model: Levit) -> None:
        super().__init__()
        self.global_pool = model.global_pool
        self.head = model.head
        self.head_dist = model.head_dist if isinstance(model, LevitDistilled) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        if self.head_dist is None:
            return self.head(x)  # type: ignore[no-any-return]
        return (self.head(x) + self.head_dist(x)) / 2  # type: ignore[no-any-return]


class TimmLeViT(StagedAdapter):
    """timm ``Levit`` / ``LevitDistilled`` on tokens (LeViT-128S/128/192/256/384 and any stages, widths and heads)."""

    name = "timm-levit"
    stem_keys = ("stem.",)
    head_keys = ("head.", "head_dist.")
    network = "Levit"
    feature_layout = "tokens"
    model: Any  # the timm network (typed loosely: timm modules expose untyped attributes)
    timm_name: str

    def __init__(self, model: Any) -> None:
        if not isinstance(model, Levit):
            raise ConfigError(f"the timm-levit adapter needs a timm Levit, got {type(model).__name__}")
        if model.use_conv:
            raise ConfigError(
                "timm-levit takes the token LeViTs (levit_192, levit_256, ...), not the levit_conv_* variants "
                "(the same network on (B, C, H, W) maps); use the name without '_conv'"
            )
        if not isinstance(model.stem, (Stem16, Stem8)):
            raise ConfigError(f"timm-levit needs timm's own stem (stem_type 's16' or 's8'), got {type(model.stem).__name__}")
        depths = [len(stage.blocks) for stage in model.stages]  # type: ignore[arg-type]
        if 0 in depths:
            raise ConfigError(f"timm-levit needs at least one block per stage, got depths {depths}")
        super().__init__(model, [stage_blocks(stage) for stage in model.stages], stem=LeViTStem(model), head=LeViTHead(model))
        for m in model.modules():  # timm's attentions, as the subclasses without the eval-mode bias cache
            live = _LIVE_BIASES.get(type(m))
            if live is not None:
                m.__class__ = live
        #: The weight the batch norms closing the residual branches started from (``None``: timm's 0).
        self.residual_bn_init: float | None = None

    # -- construction -------------------------------------------------------
    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> TimmLeViT:
        check_kwargs(dict(arch), _ARCH_KEYS, "timm-levit")
        kwargs = {k: v for k, v in arch.items() if k not in ("timm_name", "distilled", "residual_bn_init")}
        for key in ("img_size", "embed_dim", "depth", "num_heads", "attn_ratio", "mlp_ratio"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        _check_stages(kwargs, f"arch {dict(arch)}")
        init = arch.get("residual_bn_init")
        if init is not None and (isinstance(init, bool) or not isinstance(init, (int, float))):
            raise ConfigError(f"timm-levit arch residual_bn_init must be a number, got {init!r}")
        kind = LevitDistilled if arch.get("distilled", True) else Levit
        model = build_network(kind, arch, **kwargs)
        adapter = cls(model)
        if init is not None:
            for bn in _residual_closing_norms(model):
                nn.init.constant_(bn.weight, float(init))
            adapter.residual_bn_init = float(init)
        if arch.get("timm_name"):
            adapter.timm_name = arch["timm_name"]
        return adapter

    @classmethod
    def example(cls, **context: Any) -> TimmLeViT:
        """Two stages (1 and 2 blocks, widths 16 and 24, 2 and 5 heads of key size 4: 24 is not a multiple of 5)
        on 64x64 RGB images (4x4 then 2x2 tokens), 5 classes, with the distillation head. The batch norms
        closing the residual branches start at 1, not timm's 0, so that every block (and every attention
        tap) computes something from the start, as a trained network does."""
        return cls.from_arch(
            dict(img_size=64, num_classes=5, embed_dim=[16, 24], key_dim=4, depth=[1, 2], num_heads=[2, 5],
                 residual_bn_init=1.0)
        )

    @classmethod
    def from_name(cls, name: str, *, pretrained: bool = False, checkpoint: str | pathlib.Path | None = None, **kwargs: Any) -> TimmLeViT:
        """A registered timm LeViT (``pretrained`` downloads timm's weights; ``checkpoint`` loads a local file).

        Weights saved at another image size (ImageNet's 224 px for 32 px digits) are loaded at their own
        size, then their attention-bias tables are fitted to the new grids (:func:`_fit_attention_biases`):
        timm's LeViT loader has no such step, and the tables' sizes follow the token grid.
        """
        target: Any = kwargs.get("img_size")
        source = _weights_img_size(name, pretrained, checkpoint) if target is not None else None
        if source is None or list(planning_size(source)) == list(planning_size(target)):
            model, record = create_timm_model(name, Levit, "timm-levit", pretrained=pretrained, checkpoint=checkpoint, **kwargs)
        else:
            loaded, record = create_timm_model(
                name, Levit, "timm-levit", pretrained=pretrained, checkpoint=checkpoint, **{**kwargs, "img_size": source}
            )
            model, _ = create_timm_model(name, Levit, "timm-levit", **kwargs)
            assert record is not None  # weights were loaded
            record["adapted"].append(_fit_attention_biases(loaded, model))
            before, after = loaded.state_dict(), model.state_dict()
            record.setdefault("resized", {}).update(
                {k: {"file": list(v.shape), "model": list(after[k].shape)} for k, v in before.items()
                 if k.endswith("attention_biases") and v.shape != after[k].shape}
            )
            record.setdefault("from", {})["img_size"] = list(planning_size(source))
            record.setdefault("to", {})["img_size"] = list(planning_size(target))
        adapter = cls(model)
        adapter.weights_record = record
        adapter.timm_name = name
        return adapter

    @classmethod
    def timm_model_args(cls, arch: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """timm's ``levit_128s`` entry point (``create_levit`` takes every Levit argument and ``distilled``)."""
        return "levit_128s", {k: v for k, v in arch.items() if k not in ("timm_name", "residual_bn_init")}

    def arch(self) -> dict[str, Any]:
        m = self.model
        blocks = [st.blocks[0] for st in m.stages]
        first = blocks[0]
        drop_path = getattr(first.drop_path1, "drop_prob", 0.0)
        arch: dict[str, Any] = {
            "img_size": self._img_size(),
            "in_chans": int(m.in_chans),
            "num_classes": int(m.num_classes),
            "embed_dim": [int(d) for d in m.embed_dim],
            "key_dim": int(first.attn.key_dim),
            "depth": [len(st.blocks) for st in m.stages],
            "num_heads": [int(b.attn.num_heads) for b in blocks],
            "attn_ratio": [b.attn.val_dim / b.attn.key_dim for b in blocks],
            "mlp_ratio": [b.mlp.ln1.linear.out_features / b.mlp.ln1.linear.in_features for b in blocks],
            "stem_type": "s16" if isinstance(m.stem, Stem16) else "s8",
            "act_layer": _activation(m.stem.act1),
            "attn_act_layer": _activation(first.attn.proj.act),
            "global_pool": m.global_pool,
            "drop_rate": float(m.drop_rate),
            "drop_path_rate": float(f"{float(drop_path):.6g}"),
            "distilled": isinstance(m, LevitDistilled),
        }
        if self.residual_bn_init is not None:
            arch["residual_bn_init"] = self.residual_bn_init
        name = getattr(self, "timm_name", None)
        if name:
            arch["timm_name"] = name
        return arch

    def resized(self, shape: RowShape) -> dict[str, Any]:
        stages = shape.stage_shapes
        if any(h < 1 for _, _, h in stages):
            raise ConfigError(
                f"a timm-levit row has attention heads in every stage (any number: each head has the key size "
                f"{self.arch()['key_dim']}), e.g. 4x192:3/4x288:5/4x384:6; got {shape}"
            )
        arch = self.arch()
        arch.pop("timm_name", None)
        n = len(stages)

        def per_stage(values: list[float]) -> list[float]:
            return values[:n] + values[-1:] * (n - len(values))

        arch.update(
            embed_dim=[w for _, w, _ in stages], depth=[d for d, _, _ in stages], num_heads=[h for _, _, h in stages],
            attn_ratio=per_stage(arch["attn_ratio"]), mlp_ratio=per_stage(arch["mlp_ratio"]),
        )
        _check_stages(arch, f"row {shape}")
        return arch

    # -- structure ------------------------------------------------------------
    @property
    def shape(self) -> RowShape:
        return RowShape.staged(
            [(len(st.blocks), int(d), int(st.blocks[0].attn.num_heads)) for st, d in zip(self.model.stages, self.model.embed_dim)]
        )

    @property
    def input_size(self) -> tuple[int, int, int]:
        h, w = self._img_size()
        return (int(self.model.in_chans), h, w)

    def _img_size(self) -> list[int]:
        """The image size, from stage 0's grid and the stem's stride (whole stem patches, see ``_check_stages``)."""
        return [int(r) * int(self.model.stem.stride) for r in self.model.stages[0].blocks[0].attn.resolution]

    def signatures(self) -> list[FeatureSignature]:
        """Tokens at each stage's grid and width, read off the network (no forward pass): the stem output
        is stage 0's input, a block's output is its stage's."""
        m = self.model
        per_stage = [
            FeatureSignature("tokens", int(d), (int(st.blocks[0].attn.resolution[0]) * int(st.blocks[0].attn.resolution[1]),))
            for st, d in zip(m.stages, m.embed_dim)
        ]
        sigs = [per_stage[0]]
        for s, st in enumerate(m.stages):
            sigs += [per_stage[s]] * len(st.blocks)
        return sigs

    def restore_buffers(self, module: nn.Module) -> None:
        """The attention-bias index tables (``attention_bias_idxs``) are not in timm's state dict: recompute them."""
        restore_timm_buffers(module)

    def published_exclusions(self) -> tuple[str, ...]:
        """None: the official ``stitching_levit`` code reports FLOPs only, no parameter counts, so there
        is no published convention to reproduce; a LeViT descendant's count is every parameter it runs."""
        return ()

    def uncounted_macs(self) -> dict[nn.Module, Any]:
        """q @ k^T and attn @ v of every attention, the downsampling ones included (queries on the
        subsampled grid): ``queries * keys * heads * (key_dim + val_dim)`` per image."""
        return {
            m: _attention_macs for m in self.model.modules() if isinstance(m, (LevitAttention, AttentionDownsample))
        }


def _weights_img_size(name: str, pretrained: bool, checkpoint: str | pathlib.Path | None) -> tuple[int, int] | None:
    """The image size the starting weights were saved at: a file's, from its first attention-bias table (a
    square grid of whole stem patches); timm's, from its pretrained config. ``None``: no weights, or unknown."""
    if checkpoint is None:
        if not pretrained:
            return None
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        size = ((cfg.to_dict().get("input_size") if cfg is not None else None) or (3, 224, 224))[1:]
        return (int(size[0]), int(size[1]))
    import timm

    with torch.device("meta"):
        stem: Any = timm.create_model(name).stem
    stride = int(stem.stride)
    table = read_state_dict(checkpoint).get("stages.0.blocks.0.attn.attention_biases")
    if table is None or table.dim() != 2:
        return None  # not a LeViT file: create_timm_model names the first key that differs
    side = math.isqrt(int(table.shape[1]))
    return (side * stride, side * stride) if side * side == int(table.shape[1]) else None


def _fit_attention_biases(loaded: nn.Module, model: nn.Module) -> str:
    """Move ``loaded``'s weights into ``model`` (the same LeViT on another grid), fitting each attention-bias
    table to its new grid by relative offset: a table holds one bias per (|dy|, |dx|) offset in key tokens,
    and a token covers the same pixels at any image size, so the offsets a smaller grid has keep their
    biases (the table is cropped) and the offsets only a larger grid has take the bias of the farthest
    trained one (edge padding). Returns the line for the weights record."""
    state = loaded.state_dict()
    fitted = []
    for key, table in list(state.items()):
        if not key.endswith("attention_biases"):
            continue
        old: Any = loaded.get_submodule(key.rsplit(".", 1)[0]).resolution
        new: Any = model.get_submodule(key.rsplit(".", 1)[0]).resolution
        if tuple(old) == tuple(new):
            continue
        grid = table.reshape(1, table.shape[0], int(old[0]), int(old[1]))[:, :, : int(new[0]), : int(new[1])]
        pad = (0, max(0, int(new[1]) - grid.shape[3]), 0, max(0, int(new[0]) - grid.shape[2]))
        if any(pad):
            grid = nn.functional.pad(grid, pad, mode="replicate")
        state[key] = grid.reshape(table.shape[0], -1).contiguous()
        fitted.append((tuple(old), tuple(new)))
    model.load_state_dict(state, strict=True)
    first = fitted[0] if fitted else ((0, 0), (0, 0))
    return (f"attention biases fitted to the new token grids by offset ({len(fitted)} tables, "
            f"stage 0: {first[0][0]}x{first[0][1]} -> {first[1][0]}x{first[1][1]})")


class _LiveBiasAttention(LevitAttention):
    """timm's LeViT attention, its biases gathered from the current weights on every call (no eval-mode cache)."""

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        index: Any = self.attention_bias_idxs  # a registered buffer
        return self.attention_biases[:, index]


class _LiveBiasAttentionDownsample(AttentionDownsample):
    """timm's LeViT downsampling attention, its biases gathered from the current weights on every call."""

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        index: Any = self.attention_bias_idxs  # a registered buffer
        return self.attention_biases[:, index]


#: timm's attention classes -> the same without the cache (module-level classes: a network still pickles).
_LIVE_BIASES: dict[type, type] = {LevitAttention: _LiveBiasAttention, AttentionDownsample: _LiveBiasAttentionDownsample}


def _residual_closing_norms(model: nn.Module) -> list[Any]:
    """The batch norms timm starts at weight 0 (``bn_weight_init=0``): each attention's output projection
    and each MLP's second layer, so that a fresh residual branch adds nothing."""
    norms: list[Any] = []
    for m in model.modules():
        mod: Any = m  # timm's submodules are untyped
        if isinstance(m, LevitAttention):
            norms.append(mod.proj.ln.bn)
        elif isinstance(m, LevitMlp):
            norms.append(mod.ln2.bn)
    return norms


def _attention_macs(m: Any, inputs: tuple[Any, ...], _out: Any) -> int:
    b, n, _ = inputs[0].shape  # (B, tokens, C)
    queries = n
    if isinstance(m, AttentionDownsample):
        res: Any = m.resolution  # (H, W) of the keys' grid
        rh, rw = res
        queries = -(-rh // m.stride) * -(-rw // m.stride)
    return int(b * queries * n * m.num_heads * (m.key_dim + m.val_dim))


def _activation(module: nn.Module) -> str:
    for kind, name in _ACTIVATIONS.items():
        if type(module) is kind:
            return name
    raise ConfigError(f"timm-levit cannot describe the activation {type(module).__name__} (known: {sorted(_ACTIVATIONS.values())})")


def _check_stages(kwargs: Mapping[str, Any], where: str) -> None:
    """LeViT's own rules: the stem reaches the first width in steps of 2 (it needs >= 8 channels with the
    16x stem, >= 4 with the 8x one), a downsampling attention has ``width // key_dim`` heads (a width below
    ``key_dim`` before a downsampling leaves it none), and the image splits into whole stem patches."""
    widths, key_dim = kwargs.get("embed_dim"), kwargs.get("key_dim", 64)
    if not (isinstance(widths, (tuple, list)) and widths and all(type(w) is int for w in widths) and type(key_dim) is int):
        return  # the timm constructor refuses malformed values itself
    stride = 8 if kwargs.get("stem_type") == "s8" else 16
    if widths[0] < stride // 2:
        raise ConfigError(f"timm-levit {where}: the first stage is {widths[0]} wide; the {stride}x stem needs >= {stride // 2} channels")
    narrow = [i for i, w in enumerate(widths[:-1]) if w < key_dim]
    if narrow:
        raise ConfigError(
            f"timm-levit {where}: stage {narrow[0]} is {widths[narrow[0]]} wide, below key_dim {key_dim}; LeViT's downsampling "
            f"attention after it has width // key_dim heads, so widen the stage or lower key_dim"
        )
    size = kwargs.get("img_size", 224)
    sides = (size, size) if isinstance(size, int) else tuple(size)
    if any(type(s) is int and s % stride for s in sides):
        raise ConfigError(
            f"timm-levit {where}: image size {size} is not a multiple of the stem's stride {stride}; timm's LeViT "
            f"sizes its attention biases for whole stem patches, so choose a multiple of {stride}"
        )


__all__ = ["TimmLeViT"]
