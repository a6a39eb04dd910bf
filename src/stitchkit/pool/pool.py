"""The pool: rows of learngene instances plus the stitch layers between rows.

A row is one trained network (an auxiliary model for Learngene Pool, an
anchor for SN-Net) held through its :class:`~stitchkit.core.interfaces.AncestryAdapter`;
its blocks are the learngene instances, and it keeps its own stem, final norm
and head. Stitch layers are named by the method; their module (``nn.Linear``
between tokens, a 1x1 ``nn.Conv2d`` from a feature map) is chosen by the
feature signatures of the boundaries they join (:mod:`stitchkit.pool.stitch_layers`). Paths are
enumerated by the method once and stored with the pool, so a pool file is
self-describing.
"""

from __future__ import annotations

import copy as copy_module
import dataclasses

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.interfaces import AncestryAdapter, Method
from .measure import count_macs, count_params
from .lowrank import check_rank, low_rank_params
from ..core.spec import FeatureSignature, Path, RowShape, StitchSpec, find_path
from .stitch_layers import make_stitch, stitch_layouts
from .stitched import Descendant, build_descendant


# -- descendant cache invalidation ----------------------------------------------
# A cached descendant holds the pool's own modules. It goes stale when a
# module is (re)assigned anywhere inside the pool: a stitch layer, a row, a
# block of a row, a row's head. torch calls a global hook on every such
# assignment; the hook bumps a generation counter when the parent is a module
# of a pool with cached descendants, and a cached entry is used only while the
# generation it was built in is current. Assignments elsewhere cost one set lookup.
_generation = 0
_watched: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_hook: Any = None


def _on_module_assigned(parent: nn.Module, name: str, value: nn.Module | None) -> None:
    global _generation
    if parent in _watched:
        _generation += 1


def _watch(pool: nn.Module) -> None:
    global _hook
    if _hook is None:
        _hook = torch.nn.modules.module.register_module_module_registration_hook(_on_module_assigned)
    _watched.update(pool.modules())


class Pool(nn.Module):
    """Rows (sorted by width) + stitch layers + the paths the method allows."""

    # the descendant cache (see descendant() and forget_descendants())
    _descendants: dict[Path, tuple[int, Descendant]]
    _cache_owner: int
    _watched_in: int

    def __init__(
        self,
        rows: Sequence[AncestryAdapter],
        stitches: Sequence[StitchSpec],
        paths: Sequence[Path],
        *,
        method: str,
        info: Mapping[str, Any] | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
        stitched_final_norm: bool = True,
    ) -> None:
        super().__init__()
        if not rows:
            raise ConfigError("a pool needs at least one row")
        widths = [a.shape.width for a in rows]
        if widths != sorted(widths):
            raise ConfigError(f"pool rows must be sorted by width (narrow first), got widths {widths}")
        self.adapters = list(rows)
        self.rows = nn.ModuleList(a.model for a in rows)
        self.stitch_specs = {s.name: s for s in stitches}
        if len(self.stitch_specs) != len(stitches):
            raise ConfigError("stitch layer names must be unique")
        depths = [a.shape.depth for a in rows]
        for p in paths:
            p.validate(depths, self.stitch_specs)
        check_inputs(self.adapters)
        self.stitch_specs = _fit_signatures(self.adapters, self.stitch_specs, paths)
        self.stitches = nn.ModuleDict({n: make_stitch(s) for n, s in self.stitch_specs.items()})
        self.paths = list(paths)
        self.method = method
        self.info: dict[str, Any] = dict(info or {})
        self.evaluation: dict[str, dict[str, Any]] = {}
        self.extras: dict[str, torch.Tensor] = dict(extras or {})
        self._stitched_final_norm = bool(stitched_final_norm)
        self.forget_descendants()

    @classmethod
    def from_method(
        cls, method: Method, rows: Sequence[AncestryAdapter], *, stitch_rank: int = 0, stitch_alpha: float = 1.0, **kwargs: Any
    ) -> Pool:
        """A pool whose stitch layers and paths are those ``method`` defines for ``rows``.

        ``stitch_rank > 0`` makes every stitch layer low-rank (:mod:`stitchkit.pool.lowrank`).
        """
        shapes = [a.shape for a in rows]
        stitches = method.stitches(shapes)
        paths = method.paths(shapes, stitches)
        if stitch_rank:
            check_rank(stitch_rank, stitches)
            stitches = [dataclasses.replace(s, rank=stitch_rank, alpha=stitch_alpha) for s in stitches]
        return cls(rows, stitches, paths, method=method.name, **kwargs)

    # -- access ----------------------------------------------------------------
    @property
    def shapes(self) -> list[RowShape]:
        return [a.shape for a in self.adapters]

    def path(self, key: Path | int | str) -> Path:
        """A path by object, index in :attr:`paths`, name (``r0[0:3]+...``) or label
        (strings: names, then labels, then ``"3"``/``"#3"`` as an index; see :func:`~stitchkit.core.spec.find_path`)."""
        if isinstance(key, Path):
            key.validate([s.depth for s in self.shapes], self.stitch_specs)
            return key
        return find_path(self.paths, key)

    def descendant(self, key: Path | int | str, *, copy: bool = False) -> Descendant:
        """The descendant for a path, sharing this pool's parameters (or a deep copy).

        Built once per path and cached: switching descendants per request costs
        a dictionary lookup (see docs/pools.md, "Serving"). The cache follows the
        pool: assigning a new stitch layer, row, block or head anywhere in the
        pool rebuilds the descendants on their next use.
        """
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(self.paths):
            path = self.paths[key]  # the fast path of per-request switching
        else:
            path = self.path(key)
        if copy:
            return copy_module.deepcopy(build_descendant(self.adapters, self.stitches, path, stitched_final_norm=self.stitched_final_norm))
        if self._cache_owner != id(self):  # a copy of another pool (copy.deepcopy): its entries watch nothing
            self.forget_descendants()
        hit = self._descendants.get(path)
        if hit is not None and hit[0] == _generation:
            return hit[1]
        if self._watched_in != _generation:
            _watch(self)
            self._watched_in = _generation
        d = build_descendant(self.adapters, self.stitches, path, stitched_final_norm=self.stitched_final_norm).train(self.training)
        self._descendants[path] = (_generation, d)
        return d

    def train(self, mode: bool = True) -> Pool:
        """Set training mode on the pool and on its cached descendants (their stem and head wrappers)."""
        super().train(mode)
        for _, d in self.__dict__.get("_descendants", {}).values():
            d.train(mode)
        return self

    def replace_row(self, index: int, adapter: AncestryAdapter) -> None:
        """Put ``adapter`` (a row of the same shape) in row ``index``; descendants are rebuilt on their next use."""
        if not 0 <= index < len(self.adapters):
            raise ConfigError(f"row {index} does not exist: the pool has {len(self.adapters)} rows")
        if adapter.shape != self.adapters[index].shape:
            raise ConfigError(f"row {index} is {self.adapters[index].shape}; a replacement must have that shape, not {adapter.shape}")
        self.adapters[index] = adapter
        self.rows[index] = adapter.model

    def forget_descendants(self) -> None:
        """Empty the descendant cache (needed only after removing a module: ``del``, ``pop``, ``insert``)."""
        self._descendants = {}
        self._cache_owner = id(self)
        self._watched_in = -1

    @property
    def stitched_final_norm(self) -> bool:
        """Whether stitched descendants run the end row's final norm (native pools: yes;
        pools imported from the official SN-Net code: no, as its stitched forward)."""
        return self._stitched_final_norm

    @stitched_final_norm.setter
    def stitched_final_norm(self, value: bool) -> None:
        self._stitched_final_norm = bool(value)
        self.forget_descendants()  # cached descendants hold the other head

    # -- size ------------------------------------------------------------------
    def storage_params(self) -> int:
        """Parameters stored: every row plus every stitch layer (not the ancestry)."""
        return count_params(self)

    def part_macs(self) -> dict[str, Any]:
        """MACs of every stem, block, stitch layer and head, each counted once.

        MACs add up along a path, so a descendant's count is the sum of its
        parts; counting parts once instead of whole descendants makes planning
        pools with many paths (SN-Net's 71) fast. Works on the meta device.
        """
        stems, blocks, heads = [], [], []
        for a in self.adapters:
            sigs = a.signatures()
            extra = a.uncounted_macs()
            stems.append(count_macs(a.stem(), a.input_size, extra=extra))
            blocks.append([count_macs(b, sigs[i].tensor_shape(), extra=extra) for i, b in enumerate(a.blocks)])
            heads.append(count_macs(a.head(), sigs[-1].tensor_shape(), extra=extra))
        stitches = {}
        for name, layer in self.stitches.items():
            spec = self.stitch_specs[name]
            positions = self.adapters[spec.src].signatures()[0].positions
            for path in self.paths:
                if name in path.stitches:
                    i = path.stitches.index(name)
                    positions = self.adapters[spec.src].signatures()[path.segments[i].stop].positions
                    break
            stitches[name] = positions * spec.src_width * spec.dst_width  # one (src -> dst) product per token / pixel
        return {"stems": stems, "blocks": blocks, "heads": heads, "stitches": stitches}

    def path_macs(self, path: Path, parts: Mapping[str, Any] | None = None) -> int:
        """MACs of one descendant per image, as the sum of its parts."""
        parts = parts or self.part_macs()
        total = parts["stems"][path.segments[0].row] + parts["heads"][path.segments[-1].row]
        total += sum(parts["blocks"][s.row][b] for s in path.segments for b in range(s.start, s.stop))
        return total + sum(parts["stitches"][n] for n in path.stitches)

    def costs(self, *, convention: str = "true", parts: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Params and MACs of every descendant (works on the meta device); ``parts``: a
        :meth:`part_macs` result to reuse."""
        parts = parts or self.part_macs()
        out = []
        for i, p in enumerate(self.paths):
            d = self.descendant(p)
            out.append(
                {
                    "index": i,
                    "name": p.name,
                    "label": p.label,
                    "path": p.to_json(),
                    "blocks": p.num_blocks,
                    # as exported: a low-rank stitch merges into a plain layer
                    "params": count_params(d, convention=convention) - low_rank_params(d),  # type: ignore[arg-type]
                    "macs": self.path_macs(p, parts),
                }
            )
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON description stored in a pool file's metadata."""
        return {
            "method": self.method,
            "rows": [
                {"adapter": a.name, "arch": a.arch(), **a.shape.to_json()}
                for a in self.adapters
            ],
            "stitches": [s.to_json() for s in self.stitch_specs.values()],
            "paths": [p.to_json() for p in self.paths],
            "info": self.info,
            "evaluation": self.evaluation,
            "extras": sorted(self.extras),
            "stitched_final_norm": self.stitched_final_norm,
        }


def check_inputs(rows: Sequence[AncestryAdapter]) -> None:
    """Every row must take the same image: a descendant runs its first row's stem, and one pool has one input."""
    sizes = [tuple(a.input_size) for a in rows]
    for r, size in enumerate(sizes[1:], 1):
        if size != sizes[0]:
            what = "channels" if size[0] != sizes[0][0] else "image size"
            raise ConfigError(
                f"rows 0 and {r} take different inputs (channels, height, width): {sizes[0]} and {size}; "
                f"descendants starting in either row would need different images ({what} differ), so they cannot "
                "share a pool: give every row the same img_size and in_chans"
            )


def check_stitchable(method: Method, rows: Sequence[AncestryAdapter]) -> None:
    """Refuse rows ``method`` cannot stitch, naming the failing boundary, before anything trains.

    The same checks :class:`Pool` makes when it is built (one input for every
    row; at every boundary a stitch layer joins, a layout it can join and the
    same token count or grid), run on the rows alone: builds call it on their
    anchors or rows before the first training phase, ``stitchkit plan`` on its
    meta-device rows.
    """
    check_inputs(rows)
    shapes = [a.shape for a in rows]
    stitches = method.stitches(shapes)
    _fit_signatures(rows, {s.name: s for s in stitches}, method.paths(shapes, stitches))


def _fit_signatures(
    adapters: Sequence[AncestryAdapter], specs: Mapping[str, StitchSpec], paths: Sequence[Path]
) -> dict[str, StitchSpec]:
    """Check every stitch layer against the signatures of the boundaries it joins; fill in its layouts.

    A layer used at several places must see the same channels and layouts at
    each; a layer no path uses is checked against the rows' stem outputs.
    """
    n = len(adapters)
    uses: dict[str, list[tuple[FeatureSignature, FeatureSignature, str]]] = {name: [] for name in specs}
    for p in paths:
        for i, name in enumerate(p.stitches):
            a, b = p.segments[i], p.segments[i + 1]
            front = adapters[a.row].signatures()[a.stop]
            end = adapters[b.row].signatures()[b.start]
            where = (f"after block {a.stop - 1} of row {a.row} ({adapters[a.row].name} {adapters[a.row].shape}), "
                     f"before block {b.start} of row {b.row} ({adapters[b.row].name} {adapters[b.row].shape}), in path {p.name}")
            uses[name].append((front, end, where))
    out: dict[str, StitchSpec] = {}
    for name, s in specs.items():
        for end_row in (s.src, s.dst):
            if not 0 <= end_row < n:
                raise ConfigError(f"stitch layer {name!r} joins row {end_row}, which does not exist (the pool has {n} rows)")
        places = uses[name] or [(adapters[s.src].signatures()[0], adapters[s.dst].signatures()[0], "(used by no path)")]
        layouts = None
        for front, end, where in places:
            for row, want, sig in ((s.src, s.src_width, front), (s.dst, s.dst_width, end)):
                if sig.channels != want:
                    raise ConfigError(
                        f"stitch layer {name!r} expects width {want} at row {row}, which has "
                        f"{sig.channels} channels there ({sig}) {where}"
                    )
            try:
                got = stitch_layouts(name, front, end)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (the boundary {where})") from None
            if layouts is not None and got != layouts:
                raise ConfigError(f"stitch layer {name!r} joins {layouts} layouts at one place and {got} at another")
            layouts = got
        assert layouts is not None
        out[name] = replace(s, src_layout=layouts[0], dst_layout=layouts[1])
    return out
