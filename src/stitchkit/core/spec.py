"""Plain, JSON-serialisable descriptions of rows, stitch layers and paths.

These are the words of the pool: a *row* is one trained network (an auxiliary
model or an SN-Net anchor) whose blocks are learngene instances; a *stitch
layer* maps one row's width to another's; a *path* says which blocks of which
rows a descendant runs, and which stitch layers join them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, PathError
from .limits import MAX_ROWS, check_row


#: Tensor layouts a block boundary can have (batch dimension first):
#: ``tokens`` ``(B, N, C)``, ``nhwc`` ``(B, H, W, C)`` (channels-last grid, timm's Swin),
#: ``map`` ``(B, C, H, W)`` (a CNN feature map).
LAYOUTS = ("tokens", "nhwc", "map")


@dataclass(frozen=True)
class FeatureSignature:
    """What flows across one block boundary: its layout, channels and token count or grid.

    ``size`` is ``(N,)`` for ``tokens`` and ``(H, W)`` for ``nhwc`` and ``map``.
    Adapters declare one per boundary (:meth:`~stitchkit.core.interfaces.AncestryAdapter.signatures`);
    the stitch layer joining two boundaries is chosen from the two signatures.
    """

    layout: str
    channels: int
    size: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"feature layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        want = 1 if self.layout == "tokens" else 2
        if len(self.size) != want or self.channels < 1 or any(int(d) < 1 for d in self.size):
            raise ConfigError(f"a {self.layout} signature needs {want} positive sizes and channels >= 1, got {self}")

    @property
    def positions(self) -> int:
        """Tokens or pixels per image."""
        n = 1
        for d in self.size:
            n *= int(d)
        return n

    def tensor_shape(self) -> tuple[int, ...]:
        """The per-image tensor shape (without the batch dimension)."""
        if self.layout == "map":
            return (self.channels, *self.size)
        return (*self.size, self.channels)

    def __str__(self) -> str:
        return f"{self.layout}{'x'.join(map(str, self.size))}@{self.channels}"

    @classmethod
    def of(cls, layout: str, shape: tuple[int, ...]) -> FeatureSignature:
        """The signature of a per-image tensor ``shape`` (no batch dimension) in ``layout``."""
        shape = tuple(int(d) for d in shape)
        if layout == "map":
            return cls(layout, shape[0], shape[1:])
        return cls(layout, shape[-1], shape[:-1])


@dataclass(frozen=True)
class RowShape:
    """Depth, width and heads of a row; the part of a row a planner needs.

    A plain ViT is one stage: ``RowShape(12, 768, 12)``, written ``12x768:12``.
    A hierarchical family (Swin, ResNet, ConvNeXt) has ``stages``, one
    ``(depth, width, heads)`` per stage; then ``depth`` is the total block
    count and ``width`` / ``heads`` those of the last stage. ``heads = 0``
    means the blocks have no attention (a CNN). Build those with
    :meth:`staged`; text form ``2x96:3/2x192:6/6x384:12/2x768:24`` (Swin-T)
    or ``3x256/4x512/6x1024/3x2048`` (ResNet-50).

    Depth, width and heads are plain data: how heads relate to the width is
    a family's rule, checked by its adapter (a ViT splits its width into
    ``heads`` equal parts; LeViT-192's 288-wide stage has 5 heads of a fixed
    key size, ``4x192:3/4x288:5/4x384:6``).
    """

    depth: int
    width: int
    heads: int
    stages: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or self.heads < 0:
            raise ConfigError(f"row shape must be positive (heads >= 0), got {self}")
        if self.stages:
            stages = tuple(tuple(int(v) for v in st) for st in self.stages)
            object.__setattr__(self, "stages", stages)
            if len(stages) == 1:
                object.__setattr__(self, "stages", ())
            for d, w, h in stages:
                if d < 1 or w < 1 or h < 0:
                    raise ConfigError(
                        f"stage {d}x{w}:{h} of row {self} is not a valid stage: depth and width must be >= 1 and heads >= 0"
                    )
            if (sum(d for d, _, _ in stages), *stages[-1][1:]) != (self.depth, self.width, self.heads):
                raise ConfigError(f"row {self}: depth, width and heads must be the stage total, last width and last heads")

    @classmethod
    def staged(cls, stages: "list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]") -> RowShape:
        """A row of several stages ``[(depth, width, heads), ...]`` (heads 0: no attention)."""
        stages = tuple(tuple(int(v) for v in st) for st in stages)  # type: ignore[misc]
        if not stages:
            raise ConfigError("a row needs at least one stage")
        return cls(sum(d for d, _, _ in stages), stages[-1][1], stages[-1][2], stages)  # type: ignore[arg-type]

    @property
    def stage_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """``(depth, width, heads)`` per stage; one stage for a plain ViT."""
        return self.stages or ((self.depth, self.width, self.heads),)

    @property
    def stage_starts(self) -> list[int]:
        """Index of the first block of each stage (blocks are numbered across stages)."""
        starts, n = [], 0
        for d, _, _ in self.stage_shapes:
            starts.append(n)
            n += d
        return starts

    def width_at(self, boundary: int) -> int:
        """Channels entering block ``boundary`` (``depth``: leaving the last block), from the stage
        widths: the width of the stage of block ``boundary - 1`` (block 0: the first stage's width;
        the adapter's :meth:`~stitchkit.core.interfaces.AncestryAdapter.signatures` have the exact value)."""
        if not 0 <= boundary <= self.depth:
            raise ConfigError(f"block boundary {boundary} is out of range for row {self}")
        block = max(boundary - 1, 0)
        for start, (d, w, _) in zip(self.stage_starts, self.stage_shapes):
            if block < start + d:
                return w
        return self.width  # pragma: no cover - unreachable

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"depth": self.depth, "width": self.width, "heads": self.heads}
        if self.stages:
            d["stages"] = [list(s) for s in self.stages]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RowShape:
        stages = d.get("stages")
        if stages:
            return cls(int(d["depth"]), int(d["width"]), int(d["heads"]), tuple(tuple(s) for s in stages))
        return cls(int(d["depth"]), int(d["width"]), int(d["heads"]))

    def __str__(self) -> str:
        return "/".join(f"{d}x{w}:{h}" if h else f"{d}x{w}" for d, w, h in self.stage_shapes)


_STAGE_RE = re.compile(r"^\s*(\d{1,100})\s*x\s*(\d{1,100})\s*(?::\s*(\d{1,100})\s*)?$")


def parse_row(text: str) -> RowShape:
    """Parse one row: ``6x192:3`` (a ViT) or stages joined by ``/``: ``2x64/2x128/2x256/2x512``."""
    stages = []
    for part in text.split("/"):
        m = _STAGE_RE.match(part)
        if not m:
            raise ConfigError(
                f"cannot parse row {text.strip()!r}: expected DEPTHxWIDTH:HEADS (e.g. 6x192:3), or stages "
                f"DEPTHxWIDTH[:HEADS] joined by '/' (e.g. 2x64/2x128/2x256/2x512 for a ResNet-18)"
            )
        depth, width, heads = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        check_row(depth, width, heads, f"row {text.strip()!r}")
        stages.append((depth, width, heads))
    check_row(sum(d for d, _, _ in stages), stages[-1][1], stages[-1][2], f"row {text.strip()!r}")
    return RowShape.staged(stages)


def find_path(paths: list[Path] | tuple[Path, ...], key: int | str) -> Path:
    """The descendant a user means by ``key``: an int index, or a string.

    A string is matched, in this order, against path names, then labels, then
    read as an index (``"3"`` or ``"#3"``): so a descendant labelled ``"0"`` is
    reachable by its label, and ``"#0"`` always means index 0.
    """
    if isinstance(key, str):
        for p in paths:
            if key == p.name:
                return p
        for p in paths:
            if p.label and key == p.label:
                return p
        digits = key[1:] if key.startswith("#") else key
        if not (digits.isascii() and digits.isdigit()):
            raise PathError(f"no descendant named {key!r} (no name, label or index matches); run 'stitchkit info' on the pool to list them")
        key = int(digits)
    if isinstance(key, bool) or not isinstance(key, int):
        raise PathError(f"a descendant key is an index, a name or a label, got {type(key).__name__}")
    if not 0 <= key < len(paths):
        raise PathError(f"descendant index {key} out of range: the pool has {len(paths)} descendants (0..{len(paths) - 1})")
    return paths[key]


def parse_rows(text: str) -> list[RowShape]:
    """Parse ``"6x192:3,6x768:12"`` (rows DEPTHxWIDTH:HEADS, comma separated; a hierarchical row
    joins its stages with ``/``, see :func:`parse_row`). Sizes are checked against
    :mod:`stitchkit.core.limits` before anything is built."""
    parts = text.split(",")
    if len(parts) > MAX_ROWS:
        raise ConfigError(f"{len(parts)} rows given; a pool has at most {MAX_ROWS} (stitchkit.core.limits.MAX_ROWS)")
    rows = [parse_row(part) for part in parts]
    if not rows:
        raise ConfigError("no rows given")
    return rows


@dataclass(frozen=True)
class StitchSpec:
    """A stitch layer from row ``src`` (``src_width`` channels) to row ``dst`` (``dst_width``).

    ``name`` is the key of the layer in the pool (``stitches.<name>.weight``).
    ``src_layout`` / ``dst_layout`` are the layouts of the two boundaries it
    joins (a pool fills them in from its rows' signatures); they choose the
    module: ``nn.Linear`` between token layouts, a 1x1 ``nn.Conv2d`` from a
    feature map (see :mod:`stitchkit.pool.stitch_layers`). Methods leave the
    default ``tokens``. ``rank > 0`` makes it a low-rank layer
    (:mod:`stitchkit.pool.lowrank`): a frozen weight plus a trainable update of
    that rank scaled by ``alpha / rank``.
    """

    name: str
    src: int
    dst: int
    src_width: int
    dst_width: int
    src_layout: str = "tokens"
    dst_layout: str = "tokens"
    rank: int = 0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ConfigError(f"stitch name {self.name!r} may only use letters, digits, _ and -")
        for lay in (self.src_layout, self.dst_layout):
            if lay not in LAYOUTS:
                raise ConfigError(f"stitch {self.name!r}: layout {lay!r} is not one of {', '.join(LAYOUTS)}")
        if self.rank < 0 or not self.alpha > 0:
            raise ConfigError(f"stitch layer {self.name!r}: rank must be >= 0 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "src": self.src,
            "dst": self.dst,
            "src_width": self.src_width,
            "dst_width": self.dst_width,
            "src_layout": self.src_layout,
            "dst_layout": self.dst_layout,
        }
        if self.rank:
            d.update(rank=self.rank, alpha=self.alpha)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StitchSpec:
        """Read a stitch description; format-1 files have no layouts (they are all ``tokens``)."""
        return cls(
            d["name"], int(d["src"]), int(d["dst"]), int(d["src_width"]), int(d["dst_width"]),
            d.get("src_layout", "tokens"), d.get("dst_layout", "tokens"),
            int(d.get("rank", 0)), float(d.get("alpha", 1.0)),
        )


def stitch_name(src: int, dst: int, index: int) -> str:
    """Conventional stitch-layer name: ``s<src>_<dst>_<index>``."""
    return f"s{src}_{dst}_{index}"


@dataclass(frozen=True)
class Segment:
    """Blocks ``start <= b < stop`` of row ``row``. May be empty (head only)."""

    row: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Path:
    """Segments run in order; ``stitches[i]`` joins ``segments[i]`` to ``segments[i+1]``.

    The first segment starts at block 0 of its row (the descendant takes that
    row's input stem); the last ends at the last block of its row (the
    descendant takes that row's final norm and head).
    """

    segments: tuple[Segment, ...]
    stitches: tuple[str, ...] = ()
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise PathError("a path needs at least one segment")
        if len(self.stitches) != len(self.segments) - 1:
            raise PathError(
                f"a path of {len(self.segments)} segments needs {len(self.segments) - 1} "
                f"stitch layers, got {len(self.stitches)}"
            )

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(s.row for s in self.segments)

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def is_single_row(self) -> bool:
        return len(self.segments) == 1

    @property
    def name(self) -> str:
        """Stable text form, e.g. ``r0[0:3]+s0_1_2+r1[3:6]``."""
        parts = [f"r{self.segments[0].row}[{self.segments[0].start}:{self.segments[0].stop}]"]
        for st, seg in zip(self.stitches, self.segments[1:]):
            parts.append(st)
            parts.append(f"r{seg.row}[{seg.start}:{seg.stop}]")
        return "+".join(parts)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "segments": [[s.row, s.start, s.stop] for s in self.segments],
            "stitches": list(self.stitches),
        }
        if self.label:
            d["label"] = self.label
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Path:
        segs = tuple(Segment(int(r), int(a), int(b)) for r, a, b in d["segments"])
        return cls(segs, tuple(d.get("stitches", ())), d.get("label", ""))

    def validate(self, depths: list[int], stitches: dict[str, StitchSpec]) -> None:
        """Raise :class:`PathError` unless this path runs on rows of ``depths``."""
        for i, seg in enumerate(self.segments):
            if not 0 <= seg.row < len(depths):
                raise PathError(f"path {self.name}: row {seg.row} does not exist (pool has {len(depths)} rows)")
            if not 0 <= seg.start <= seg.stop <= depths[seg.row]:
                raise PathError(
                    f"path {self.name}: blocks [{seg.start}:{seg.stop}] out of range for row "
                    f"{seg.row} of depth {depths[seg.row]}"
                )
        if self.segments[0].start != 0:
            raise PathError(f"path {self.name}: the first segment must start at block 0")
        last = self.segments[-1]
        if last.stop != depths[last.row]:
            raise PathError(f"path {self.name}: the last segment must end at the last block of row {last.row}")
        for i, name in enumerate(self.stitches):
            if name not in stitches:
                raise PathError(f"path {self.name}: stitch layer {name!r} is not in the pool")
            st = stitches[name]
            a, b = self.segments[i].row, self.segments[i + 1].row
            if (st.src, st.dst) != (a, b):
                raise PathError(
                    f"path {self.name}: stitch layer {name!r} joins row {st.src} to row {st.dst}, "
                    f"but the path goes from row {a} to row {b}"
                )


def single_row_path(row: int, depth: int) -> Path:
    """The path that runs one whole row on its own."""
    return Path((Segment(row, 0, depth),), (), label=f"row {row}")
