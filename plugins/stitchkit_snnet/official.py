"""Import a checkpoint of the official SN-Net code (ziplab/SN-Net, ``stitching_deit``).

The official ``SNNet`` module's state dict (saved by its ``main.py`` under the
key ``model``, next to the optimizer state and the ``argparse`` namespace) is:

- ``anchors.<a>.<key>``: anchor ``a``'s timm ``VisionTransformer`` keys;
- ``stitch_layers.<c>.<l>.transform.weight`` / ``.bias``: stitch layer ``l``
  of anchor pair number ``c``, pairs numbered in ``itertools.combinations``
  order (``0-1, 0-2, 1-2`` for three anchors), without ``0-2`` under its
  default ``nearest_stitching``; every pair holds the same number of layers.

The pool written from it reproduces the official forward: its stitched
configurations skip the end anchor's final norm (``stitched_final_norm =
False``), the anchors alone keep it. See docs/snnet.md, "Importing".
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stitchkit.core.errors import ConfigError, StitchkitError
from stitchkit.core.interfaces import AncestryAdapter
from stitchkit.pool.pool import Pool
from stitchkit.core.spec import parse_rows, stitch_name

from .configurations import Stitching, paired_stitching

_STITCH_KEY = re.compile(r"^stitch_layers\.(\d+)\.(\d+)\.transform\.(weight|bias)$")
_ANCHOR_KEY = re.compile(r"^anchors\.(\d+)\.(.+)$")
_SHAPE = re.compile(r"^\s*\d+x\d+:\d+\s*$")


class OfficialCheckpointError(StitchkitError):
    """An official SN-Net checkpoint that cannot be read or does not fit the anchors."""

    def __init__(self, path: str | pathlib.Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def read_official_state(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """The ``SNNet`` state dict in ``path``: the whole file or its ``model`` entry.

    Read with ``torch.load(weights_only=True)``; the official training script
    also stores its ``argparse.Namespace``, the one class allowed besides
    tensors and containers. A ``module.`` prefix (a DDP-wrapped save) is removed.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise OfficialCheckpointError(p, "no such checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of every kind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OfficialCheckpointError(
            p, f"cannot be read as a weights-only torch checkpoint ({type(exc).__name__}: {first})"
        ) from None
    state = obj.get("model", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialCheckpointError(
            p, "holds no SNNet state dict (expected a mapping of tensors, or one under the key 'model')"
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def split_state(
    p: pathlib.Path, state: Mapping[str, torch.Tensor]
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, dict[int, dict[str, torch.Tensor]]]]:
    """``(anchors, stitch_layers)``: per anchor its own keys; per pair number, per layer, weight and bias."""
    anchors: dict[int, dict[str, torch.Tensor]] = {}
    stitches: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if m := _STITCH_KEY.match(key):
            stitches.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = value
        elif m := _ANCHOR_KEY.match(key):
            anchors.setdefault(int(m[1]), {})[m[2]] = value
        else:
            raise OfficialCheckpointError(
                p, f"unexpected key {key!r}: an official SNNet state dict holds only anchors.* and stitch_layers.*"
            )
    return anchors, stitches


def _anchor_kwargs(p: pathlib.Path, a: int, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes`` and ``img_size`` of anchor ``a`` as its tensors say (so small-image checkpoints load)."""
    for key, ndim in (("head.weight", 2), ("patch_embed.proj.weight", 4), ("pos_embed", 3)):
        if key not in state:
            raise OfficialCheckpointError(p, f"anchor {a} has no {key!r} (key anchors.{a}.{key})")
        if not isinstance(state[key], torch.Tensor) or state[key].ndim != ndim:
            shape = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise OfficialCheckpointError(p, f"anchors.{a}.{key} has shape {shape}, not the {ndim} dimensions a timm ViT's has")
    num_classes = state["head.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    tokens = state["pos_embed"].shape[1]
    prefix = 1 if "cls_token" in state else 0
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise OfficialCheckpointError(p, f"anchor {a}: pos_embed holds {tokens} tokens, not a square grid plus a class token")
    return {"num_classes": int(num_classes), "img_size": int(side * patch)}


def _load_anchor(p: pathlib.Path, a: int, name: str, adapter: AncestryAdapter, state: Mapping[str, torch.Tensor]) -> None:
    own = adapter.model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise OfficialCheckpointError(
            p, f"anchor {a} does not fit {name}: missing keys {[f'anchors.{a}.{k}' for k in missing[:3]]}, "
            f"unexpected keys {[f'anchors.{a}.{k}' for k in extra[:3]]}; list the anchors in the order they were trained"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise OfficialCheckpointError(
                p, f"anchors.{a}.{key} has shape {tuple(value.shape)} but {name} expects {tuple(own[key].shape)}; "
                f"list the anchors in the order they were trained (--anchors A,B,C)"
            )
        check_values(p, f"anchors.{a}.{key}", value, own[key])
    adapter.model.load_state_dict(state, strict=True)


def check_values(p: pathlib.Path, key: str, value: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse what a load would silently cast or carry: a non-float tensor for a float one, NaN or Inf."""
    if not target.is_floating_point():
        return
    if not value.is_floating_point():
        raise OfficialCheckpointError(
            p, f"{key} is stored as {str(value.dtype).removeprefix('torch.')}, not as a float tensor; "
            "an official checkpoint stores float weights, so this file was edited or is not one"
        )
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise OfficialCheckpointError(
            p, f"{key} holds {bad} non-finite value(s) (NaN or Inf) of {value.numel()}; "
            "import a checkpoint saved before training diverged"
        )


def official_pairs(n: int, nearest: bool) -> list[tuple[int, int]]:
    """The official ``candidate_combinations``: which anchor pair each ``stitch_layers.<c>`` holds."""
    pairs = list(itertools.combinations(range(n), 2))
    return [(a, b) for a, b in pairs if b == a + 1] if nearest else pairs


def import_snnet(
    checkpoint: str | pathlib.Path,
    anchors: Sequence[str],
    *,
    kernel_size: int = 2,
    stride: int = 1,
    registry: Any = None,
    adapter: str = "timm-vit",
) -> Pool:
    """A pool holding an official SN-Net checkpoint, whose descendants compute the official forward.

    ``anchors`` are model names for ``adapter`` (timm names, e.g.
    ``deit_tiny_patch16_224``) or ViT shapes ``DEPTHxWIDTH:HEADS``, smallest
    first, as the checkpoint was trained;
    class count and image size are read from the checkpoint. ``kernel_size``
    and ``stride`` are the training run's ``--stitch_kernel_size`` /
    ``--stitch_stride``; ``nearest_stitching`` is read from the number of
    anchor pairs the checkpoint holds.
    """
    from stitchkit.core.registry import default_registry

    from .method import SNNetMethod

    p = pathlib.Path(checkpoint)
    registry = registry if registry is not None else default_registry()
    names = [a.strip() for a in anchors if a.strip()]
    if len(names) < 2:
        raise ConfigError(f"import snnet: name at least two anchors, smallest first (got {names})")
    stitching = Stitching(kernel_size, stride)  # validates
    anchor_states, stitch_states = split_state(p, read_official_state(p))
    if sorted(anchor_states) != list(range(len(names))):
        raise OfficialCheckpointError(
            p, f"holds anchors {sorted(anchor_states)} but {len(names)} were named ({', '.join(names)})"
        )
    cls = registry.ancestry(adapter)
    rows: list[AncestryAdapter] = []
    for a, name in enumerate(names):
        kwargs = _anchor_kwargs(p, a, anchor_states[a])
        try:
            if _SHAPE.match(name):  # DEPTHxWIDTH:HEADS, a ViT of that shape (patch and MLP sizes read too)
                (shape,) = parse_rows(name)
                state = anchor_states[a]
                arch = dict(kwargs, depth=shape.depth, embed_dim=shape.width, num_heads=shape.heads,
                            patch_size=int(state["patch_embed.proj.weight"].shape[-1]),
                            mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / shape.width
                            if "blocks.0.mlp.fc1.weight" in state else 4.0)
                row = cls.from_arch(arch)
            else:
                row = cls.from_name(name, pretrained=False, **kwargs)
        except StitchkitError:
            raise
        except Exception as exc:  # noqa: BLE001 - unknown model names, bad kwargs
            raise ConfigError(f"import snnet: cannot create anchor {a} ({name}): {type(exc).__name__}: {exc}") from None
        _load_anchor(p, a, name, row, anchor_states[a])
        rows.append(row)
    depths = {r.shape.depth for r in rows}
    if len(depths) != 1:
        raise OfficialCheckpointError(
            p, f"anchors of depths {[r.shape.depth for r in rows]}: the official stitching_deit SNNet pairs blocks of "
            "equal-depth anchors only"
        )
    depth = depths.pop()
    n = len(rows)
    # (two anchors: both rules hold the one pair, and give the same configurations)
    nearest = {len(official_pairs(n, False)): False, len(official_pairs(n, True)): True}.get(len(stitch_states))
    if nearest is None or sorted(stitch_states) != list(range(len(stitch_states))):
        raise OfficialCheckpointError(
            p, f"holds stitch layers for pairs {sorted(stitch_states)}; {n} anchors have {n - 1} neighbouring pairs "
            f"(nearest_stitching) or {n * (n - 1) // 2} pairs in all"
        )
    stitching = Stitching(kernel_size, stride, nearest)
    layers = 1 + max(layer for _, layer in paired_stitching(depth, kernel_size, stride))
    method = SNNetMethod(kernel_size, stride, nearest_stitching=nearest)
    info = {
        "snnet": {
            "imported_from": str(p.name),
            "anchors": [{"source": name, "shape": str(r.shape)} for name, r in zip(names, rows)],
            "stitching": stitching.to_json(),
        }
    }
    pool = Pool.from_method(method, rows, info=info, stitched_final_norm=False)
    for c, (a, b) in enumerate(official_pairs(n, nearest)):
        held = stitch_states[c]
        if sorted(held) != list(range(layers)):
            raise OfficialCheckpointError(
                p, f"pair {a}-{b} (stitch_layers.{c}) holds layers {sorted(held)[:3]}..{sorted(held)[-1]} "
                f"({len(held)}), but kernel_size {kernel_size} and stride {stride} on {depth} blocks give {layers}; "
                "pass the training run's --stitch_kernel_size / --stitch_stride"
            )
        for layer in range(layers):
            target = pool.stitches[stitch_name(a, b, layer)]
            for part in ("weight", "bias"):
                key = f"stitch_layers.{c}.{layer}.transform.{part}"
                if part not in held[layer]:
                    raise OfficialCheckpointError(p, f"missing key {key!r}")
                want = tuple(getattr(target, part).shape)
                if tuple(held[layer][part].shape) != want:
                    raise OfficialCheckpointError(
                        p, f"{key} has shape {tuple(held[layer][part].shape)} but anchors {a} -> {b} "
                        f"({rows[a].shape} -> {rows[b].shape}) need {want}"
                    )
                check_values(p, key, held[layer][part], getattr(target, part))
                with torch.no_grad():
                    getattr(target, part).copy_(held[layer][part])
    return pool
