"""Descendant models: a path through a pool, as an ``nn.Module``.

A descendant runs the input stem of the row its path starts in, the path's
blocks with a stitch layer between segments, then the final norm and head of
the row it ends in. Built from a pool it *shares* the pool's parameters
(training a descendant trains the pool); ``copy=True`` gives an independent
module (for export). Its state-dict keys do not depend on the pool:
``stem.*``, ``segments.<i>.<j>.*``, ``stitches.<i>.*``, ``head.*``, where
``segments.<i>.<j>.*`` are the keys of the block module itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..core.interfaces import AncestryAdapter, MacRule
from .lowrank import merge_low_rank  # noqa: F401 - re-exported for callers of the old location
from ..core.spec import Path, StitchSpec
from ..core.errors import ConfigError
from .metainit import meta_skeleton
from .stitch_layers import make_stitch, stitch_layouts


def stitch_layer(spec: StitchSpec) -> nn.Module:
    """The module of a stitch layer (:func:`stitchkit.pool.stitch_layers.make_stitch`, low-rank when ``spec.rank > 0``)."""
    return make_stitch(spec)


class Descendant(nn.Module):
    """stem -> segment 0 -> stitch 0 -> segment 1 -> ... -> head.

    ``uncounted_macs`` and ``published_exclusions`` carry what the rows'
    adapters declare for counting (see :mod:`stitchkit.pool.measure`), so a
    descendant is measured without its adapters.
    """

    def __init__(
        self,
        stem: nn.Module,
        segments: Sequence[Sequence[nn.Module]],
        stitches: Sequence[nn.Module],
        head: nn.Module,
        path: Path,
        input_size: tuple[int, int, int],
        *,
        uncounted_macs: Mapping[nn.Module, MacRule] | None = None,
        published_exclusions: Sequence[torch.Tensor] = (),
        buffer_restorers: Sequence[Any] = (),
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
        mine = {id(m) for m in self.modules()}
        self.uncounted_macs: dict[nn.Module, MacRule] = {
            m: rule for m, rule in (uncounted_macs or {}).items() if id(m) in mine
        }
        excluded = {id(t) for t in published_exclusions}
        #: Names of the parameters a *stitched* descendant leaves out of the published count.
        self.published_exclusions = tuple(
            n for n, p in self.named_parameters(remove_duplicate=False) if id(p) in excluded
        )
        self._buffer_restorers = list(buffer_restorers)

    def restore_buffers(self) -> None:
        """Recompute non-persistent buffers after a lazy (meta-device) load, as the rows' adapters say."""
        for restore in self._buffer_restorers:
            restore(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features after the last block (before the final norm)."""
        x = self.stem(x)
        for i, segment in enumerate(self.segments):
            if i:
                x = self.stitches[i - 1](x)
            for block in cast(nn.ModuleList, segment):
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _declared(adapters: Sequence[AncestryAdapter] | Mapping[int, AncestryAdapter], path: Path) -> dict[str, Any]:
    """Counting declarations of the rows a path uses."""
    rules: dict[nn.Module, MacRule] = {}
    for r in sorted(set(path.rows)):
        rules.update(adapters[r].uncounted_macs())
    first = adapters[path.segments[0].row]
    params = first.model.state_dict(keep_vars=True)
    return {
        "uncounted_macs": rules,
        "published_exclusions": tuple(params[k] for k in first.published_exclusions() if k in params),
        "buffer_restorers": [adapters[r].restore_buffers for r in sorted(set(path.rows))],
    }


def descendant_head(adapter: AncestryAdapter, path: Path, stitched_final_norm: bool = True) -> nn.Module:
    """The end row's head for ``path``: without its final norm only for a stitched path when asked.

    ``stitched_final_norm=False`` is a pool option for pools imported from the
    official SN-Net code, whose stitched forward skips the end anchor's final
    norm; single-row descendants always keep it.
    """
    if stitched_final_norm or len(path.segments) == 1:
        return adapter.head()
    return adapter.head_without_norm()


def build_descendant(
    adapters: Sequence[AncestryAdapter],
    stitch_layers: Mapping[str, nn.Module] | nn.ModuleDict,
    path: Path,
    *,
    stitched_final_norm: bool = True,
) -> Descendant:
    """A descendant sharing the modules of ``adapters`` (rows) and ``stitch_layers``."""
    first, last = adapters[path.segments[0].row], adapters[path.segments[-1].row]
    segments = [[adapters[s.row].blocks[b] for b in range(s.start, s.stop)] for s in path.segments]
    stitches = [stitch_layers[name] for name in path.stitches]
    head = descendant_head(last, path, stitched_final_norm)
    return Descendant(first.stem(), segments, stitches, head, path, first.input_size, **_declared(adapters, path))


def descendant_skeleton(
    adapter_types: Mapping[int, type[AncestryAdapter]],
    archs: Mapping[int, Mapping[str, Any]],
    stitch_specs: Mapping[str, StitchSpec],
    path: Path,
    *,
    pool_keys: dict[str, str] | None = None,
    build_row: Callable[[int, type[AncestryAdapter], dict[str, Any]], AncestryAdapter] | None = None,
    stitched_final_norm: bool = True,
) -> Descendant:
    """An uninitialised descendant (on the meta device) with the right module tree.

    Each row the path uses is rebuilt whole on the meta device (no memory,
    no initialisers run) and the descendant takes the blocks the path runs;
    no block layout is assumed (a shortened row would need a family that can
    drop blocks anywhere). ``build_row(r, cls, arch)`` replaces
    ``cls.from_arch(arch)`` (e.g. to check the row against a file's metadata).
    Load weights with ``load_state_dict(..., assign=True)``. ``pool_keys``,
    when given, is filled with the map from the pool's tensor names the
    descendant needs to its own (:func:`pool_key_map`).
    """
    build = build_row or (lambda r, cls, arch: cls.from_arch(arch))
    with meta_skeleton():
        rows = {r: build(r, adapter_types[r], dict(archs[r])) for r in sorted(set(path.rows))}
        segments = [[rows[s.row].blocks[b] for b in range(s.start, s.stop)] for s in path.segments]
        stitches = [make_stitch(stitch_specs[n]) for n in path.stitches]
    if pool_keys is not None:
        pool_keys.update(pool_key_map(rows, path, {n: list(m.state_dict()) for n, m in zip(path.stitches, stitches)}))
    for i, name in enumerate(path.stitches):  # the file's widths and layouts must fit the rows it names
        spec, a, b = stitch_specs[name], path.segments[i], path.segments[i + 1]
        front, end = rows[a.row].signatures()[a.stop], rows[b.row].signatures()[b.start]
        if (front.channels, end.channels) != (spec.src_width, spec.dst_width) or stitch_layouts(name, front, end) != (
            spec.src_layout, spec.dst_layout
        ):
            raise ConfigError(
                f"stitch layer {name!r} is described as {spec.src_layout}@{spec.src_width} -> "
                f"{spec.dst_layout}@{spec.dst_width}, but the rows join {front} to {end} there"
            )
    first, last = rows[path.segments[0].row], rows[path.segments[-1].row]
    head = descendant_head(last, path, stitched_final_norm)
    return Descendant(first.stem(), segments, stitches, head, path, first.input_size, **_declared(rows, path))


def pool_key_map(
    adapters: Mapping[int, AncestryAdapter], path: Path, stitch_keys: Mapping[str, Sequence[str]] | None = None
) -> dict[str, str]:
    """Map the pool's tensor names a descendant needs to the descendant's own names.

    ``adapters[r]`` is row ``r`` (built on any device, the meta device
    included). The adapter's :meth:`~stitchkit.core.interfaces.AncestryAdapter.part_of`
    says which keys are stem, head and block ``i``; a block key's name inside
    the descendant is found from the block module that holds the same tensor,
    so no key layout is assumed. ``stitch_keys[name]`` is a stitch layer's keys
    (default ``weight``, ``bias``; low-rank layers add ``lora_A``, ``lora_B``).
    """
    mapping: dict[str, str] = {}
    first, last = path.segments[0].row, path.segments[-1].row
    for r in sorted(set(path.rows)):
        a = adapters[r]
        full = a.model.state_dict(keep_vars=True)
        for key in full:
            part, _ = a.part_of(key)
            if part == "stem" and r == first:
                mapping[f"rows.{r}.{key}"] = f"stem.{key}"
            elif part == "head" and r == last:
                mapping[f"rows.{r}.{key}"] = f"head.{key}"
        owner = {id(t): key for key, t in full.items()}
        for i, seg in enumerate(path.segments):
            if seg.row != r:
                continue
            for b in range(seg.start, seg.stop):
                for local, t in a.blocks[b].state_dict(keep_vars=True).items():
                    mapping[f"rows.{r}.{owner[id(t)]}"] = f"segments.{i}.{b - seg.start}.{local}"
    for i, name in enumerate(path.stitches):
        for p in (stitch_keys or {}).get(name, ("weight", "bias")):
            mapping[f"stitches.{name}.{p}"] = f"stitches.{i}.{p}"
    return mapping
