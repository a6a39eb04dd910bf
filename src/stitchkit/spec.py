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


@dataclass(frozen=True)
class RowShape:
    """Depth, width and heads of a row; the part of a row a planner needs."""

    depth: int
    width: int
    heads: int

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1 or self.heads < 1:
            raise ConfigError(f"row shape must be positive, got {self}")
        if self.width % self.heads:
            raise ConfigError(
                f"row width {self.width} is not divisible by its {self.heads} heads"
            )

    def __str__(self) -> str:
        return f"{self.depth}x{self.width}:{self.heads}"


_ROW_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_rows(text: str) -> list[RowShape]:
    """Parse ``"6x192:3,6x768:12"`` (DEPTHxWIDTH:HEADS, comma separated)."""
    rows = []
    for part in text.split(","):
        m = _ROW_RE.match(part)
        if not m:
            raise ConfigError(
                f"cannot parse row {part.strip()!r}: expected DEPTHxWIDTH:HEADS, e.g. 6x192:3"
            )
        rows.append(RowShape(*(int(g) for g in m.groups())))
    if not rows:
        raise ConfigError("no rows given")
    return rows


@dataclass(frozen=True)
class StitchSpec:
    """A stitch layer: ``Linear(src_width, dst_width)`` from row ``src`` to row ``dst``.

    ``name`` is the key of the layer in the pool (``stitches.<name>.weight``).
    ``rank > 0`` makes it a low-rank layer (:mod:`stitchkit.lowrank`): a frozen
    weight plus a trainable update of that rank scaled by ``alpha / rank``.
    """

    name: str
    src: int
    dst: int
    src_width: int
    dst_width: int
    rank: int = 0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ConfigError(f"stitch name {self.name!r} may only use letters, digits, _ and -")
        if self.rank < 0 or not self.alpha > 0:
            raise ConfigError(f"stitch layer {self.name!r}: rank must be >= 0 and alpha > 0, got rank {self.rank}, alpha {self.alpha}")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "src": self.src,
            "dst": self.dst,
            "src_width": self.src_width,
            "dst_width": self.dst_width,
        }
        if self.rank:
            d.update(rank=self.rank, alpha=self.alpha)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StitchSpec:
        return cls(
            d["name"], int(d["src"]), int(d["dst"]), int(d["src_width"]), int(d["dst_width"]),
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
