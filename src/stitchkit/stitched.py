"""Descendant models: a path through a pool, as an ``nn.Module``.

A descendant runs the input stem of the row its path starts in, the path's
blocks with a stitch layer between segments, then the final norm and head of
the row it ends in. Built from a pool it *shares* the pool's parameters
(training a descendant trains the pool); ``copy=True`` gives an independent
module (for export). Its state-dict keys do not depend on the pool:
``stem.*``, ``segments.<i>.<j>.*``, ``stitches.<i>.*``, ``head.*``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .interfaces import AncestryAdapter
from .lowrank import low_rank, merge_low_rank
from .metainit import meta_skeleton
from .spec import Path, StitchSpec


def stitch_layer(spec: StitchSpec) -> nn.Module:
    """The module of a stitch layer: ``nn.Linear``, low-rank when ``spec.rank > 0``."""
    layer = nn.Linear(spec.src_width, spec.dst_width)
    return low_rank(layer, spec.rank, spec.alpha) if spec.rank else layer


class Descendant(nn.Module):
    """stem -> segment 0 -> stitch 0 -> segment 1 -> ... -> head."""

    def __init__(
        self,
        stem: nn.Module,
        segments: Sequence[Sequence[nn.Module]],
        stitches: Sequence[nn.Module],
        head: nn.Module,
        path: Path,
        input_size: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if len(stitches) != len(segments) - 1:
            raise ValueError(f"{len(segments)} segments need {len(segments) - 1} stitch layers, got {len(stitches)}")
        self.stem = stem
        self.segments = nn.ModuleList(nn.ModuleList(seg) for seg in segments)
        self.stitches = nn.ModuleList(stitches)
        self.head = head
        self.path = path
        self.input_size = tuple(input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (before the final norm)."""
        x = self.stem(x)
        for i, segment in enumerate(self.segments):
            if i:
                x = self.stitches[i - 1](x)
            for block in cast(nn.ModuleList, segment):
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_descendant(
    adapters: Sequence[AncestryAdapter],
    stitch_layers: Mapping[str, nn.Module] | nn.ModuleDict,
    path: Path,
) -> Descendant:
    """A descendant sharing the modules of ``adapters`` (rows) and ``stitch_layers``."""
    first, last = adapters[path.segments[0].row], adapters[path.segments[-1].row]
    segments = [[adapters[s.row].blocks[b] for b in range(s.start, s.stop)] for s in path.segments]
    stitches = [stitch_layers[name] for name in path.stitches]
    return Descendant(first.stem(), segments, stitches, last.head(), path, _input_size(first))


def descendant_skeleton(
    adapter_types: Mapping[int, type[AncestryAdapter]],
    archs: Mapping[int, Mapping[str, Any]],
    stitch_specs: Mapping[str, StitchSpec],
    path: Path,
    *,
    pool_keys: dict[str, str] | None = None,
    build_row: Callable[[int, type[AncestryAdapter], dict[str, Any]], AncestryAdapter] | None = None,
) -> Descendant:
    """An uninitialised descendant (on the meta device) with the right module tree.

    Each row the path uses is rebuilt with only as many blocks as the path
    takes from it; blocks are structurally identical, so their weights can be
    loaded into any position. Nothing else of the pool is built, which is what
    makes loading one descendant from a pool file cheap. Load weights with
    ``load_state_dict(..., assign=True)``. ``pool_keys``, when given, is filled
    with the map from the pool's tensor names the descendant needs to its own.
    """
    counts: dict[int, int] = {}
    for seg in path.segments:
        counts[seg.row] = counts.get(seg.row, 0) + len(seg)
    counts.setdefault(path.segments[0].row, 0)
    counts.setdefault(path.segments[-1].row, 0)
    with meta_skeleton():
        build = build_row or (lambda r, cls, arch: cls.from_arch(arch))
        rows = {r: build(r, adapter_types[r], {**archs[r], "depth": n}) for r, n in counts.items()}
        taken = {r: 0 for r in rows}
        segments = []
        for seg in path.segments:
            blocks = rows[seg.row].blocks
            segments.append([blocks[taken[seg.row] + j] for j in range(len(seg))])
            taken[seg.row] += len(seg)
        stitches = [stitch_layer(stitch_specs[n]) for n in path.stitches]
    if pool_keys is not None:
        pool_keys.update(_skeleton_keys(rows, stitches, path))
    first, last = rows[path.segments[0].row], rows[path.segments[-1].row]
    return Descendant(first.stem(), segments, stitches, last.head(), path, _input_size(first))


def _skeleton_keys(rows: Mapping[int, AncestryAdapter], stitches: Sequence[nn.Module], path: Path) -> dict[str, str]:
    """Pool tensor name -> descendant tensor name, for the shortened rows of :func:`descendant_skeleton`.

    Shortened row ``r`` holds the blocks the path takes from it in path order;
    its block ``k`` is the pool's block ``start + j`` of the segment it serves.
    Stitch layer ``i`` keeps its own keys (``weight``, ``bias``; low-rank layers add ``lora_A``, ``lora_B``).
    """
    first, last = path.segments[0].row, path.segments[-1].row
    place: dict[tuple[int, int], tuple[int, int]] = {}  # (row, shortened index) -> (segment, position)
    taken = {r: 0 for r in rows}
    for i, seg in enumerate(path.segments):
        for j in range(len(seg)):
            place[(seg.row, taken[seg.row])] = (i, j)
            taken[seg.row] += 1
    mapping: dict[str, str] = {}
    for r, adapter in rows.items():
        for key in adapter.model.state_dict():
            part, index = adapter.part_of(key)
            if part == "stem" and r == first:
                mapping[f"rows.{r}.{key}"] = f"stem.{key}"
            elif part == "head" and r == last:
                mapping[f"rows.{r}.{key}"] = f"head.{key}"
            elif part == "block":
                i, j = place[(r, index)]  # type: ignore[index]
                prefix, _, rest = key.split(".", 2)
                mapping[f"rows.{r}.{prefix}.{path.segments[i].start + j}.{rest}"] = f"segments.{i}.{j}.{rest}"
    for i, (name, layer) in enumerate(zip(path.stitches, stitches, strict=True)):
        for p in layer.state_dict():
            mapping[f"stitches.{name}.{p}"] = f"stitches.{i}.{p}"
    return mapping


def _input_size(adapter: AncestryAdapter) -> tuple[int, int, int]:
    size = getattr(adapter, "input_size", None)
    if size is None:
        arch = adapter.arch()
        img = arch.get("img_size", 224)
        img = (img, img) if isinstance(img, int) else tuple(img)
        size = (int(arch.get("in_chans", 3)), *img)
    return tuple(size)  # type: ignore[return-value]
