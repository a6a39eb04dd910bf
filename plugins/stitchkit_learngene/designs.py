"""Auxiliary designs: the rows of a learngene pool, derived from the ancestry.

- :class:`DepthReduced` -- ``l < L`` blocks at the ancestry's width and heads;
- :class:`WidthReduced` -- ``l`` blocks at a lower width, with its own heads;
- :class:`StagedRow` -- one auxiliary of a hierarchical family (Swin, ResNet,
  ConvNeXt) with per-stage depths and widths, ``3x128/4x256/6x512/3x1024``;
- :class:`PoolDesign` -- any number of such rows, e.g. ``"6x192:3,6x768:12"``,
  sorted by width (narrow first), each row the depth- or width-reduced design
  its width implies (a staged row for hierarchical families).

Every design takes ``drop_path_rate``: stochastic depth in the rows it builds
(``None`` keeps the ancestry's; the authors' code trains its rows with 0.1).

Initialisation is not specified by the paper: ``"random"`` (the baseline) or,
for a same-width auxiliary only, ``"ancestry"``: blocks copied from a uniform
selection of ancestry blocks (the last block of each of ``l`` equal groups),
stem and head copied from the ancestry.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Any

import torch
from typing_extensions import override

from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import AncestryAdapter, AuxiliaryDesign
from stitchkit.core.spec import RowShape, parse_rows

from .levels import level_ends

INITS = ("random", "ancestry")


def uniform_block_selection(ancestry_depth: int, depth: int) -> list[int]:
    """0-based ancestry blocks copied into a ``depth``-block auxiliary: the last of each of ``depth`` groups."""
    return [end - 1 for end in level_ends(ancestry_depth, depth)]


def copy_from_ancestry(row: AncestryAdapter, ancestry: AncestryAdapter) -> list[int]:
    """Copy stem, head and a uniform selection of blocks; return the selected ancestry blocks."""
    if row.shape.width != ancestry.shape.width or row.shape.heads != ancestry.shape.heads:
        raise ConfigError(
            f"initialisation 'ancestry' copies blocks, so it needs the ancestry's width and heads "
            f"({ancestry.shape.width}:{ancestry.shape.heads}); row {row.shape} differs; use init 'random'"
        )
    if row.shape.depth > ancestry.shape.depth:
        raise ConfigError(f"row {row.shape} is deeper than the ancestry {ancestry.shape}; cannot copy its blocks")
    chosen = uniform_block_selection(ancestry.shape.depth, row.shape.depth)
    with torch.no_grad():
        row.stem().load_state_dict(ancestry.stem().state_dict())
        row.head().load_state_dict(ancestry.head().state_dict())
        for i, j in enumerate(chosen):
            row.blocks[i].load_state_dict(ancestry.blocks[j].state_dict())
    return chosen


def _half(ancestry: RowShape) -> tuple[int, int, int]:
    """``(depth, width, heads)`` of a row with half the ancestry's depth and width (heads halved when they divide)."""
    width = max(1, ancestry.width // 2)
    heads = ancestry.heads // 2 if ancestry.heads and ancestry.heads % 2 == 0 and width % (ancestry.heads // 2) == 0 else 1
    return max(1, ancestry.depth // 2), width, heads


def _single_stage(design: str, ancestry: RowShape) -> None:
    """The depth- and width-reduced designs describe a plain (one-stage) row; a hierarchical ancestry takes
    staged rows (design ``pool`` with rows such as ``1x48/1x96/3x192/1x384``)."""
    if ancestry.stages:
        raise ConfigError(
            f"design {design!r} makes one-stage rows, but the ancestry {ancestry} has stages; use design 'pool' "
            f"with staged rows (e.g. rows = \"{'/'.join(f'{max(1, d // 2)}x{w}' + (f':{h}' if h else '') for d, w, h in ancestry.stage_shapes)}\")"
        )


def check_drop_path(rate: float | None) -> float | None:
    if rate is not None and not 0.0 <= rate < 1.0:
        raise ConfigError(f"auxiliary design: drop_path_rate must be in [0, 1) (or unset: the ancestry's), got {rate}")
    return None if rate is None else float(rate)


class _RowArch(AuxiliaryDesign):
    """Sets ``drop_path_rate`` on the rows' architecture when given."""

    drop_path_rate: float | None = None

    @override
    def row_arch(self, arch: dict[str, Any]) -> dict[str, Any]:
        return arch if self.drop_path_rate is None else {**arch, "drop_path_rate": self.drop_path_rate}


class _SingleRow(_RowArch):
    def __init__(self, init: str = "random", drop_path_rate: float | None = None) -> None:
        if init not in INITS:
            raise ConfigError(f"unknown auxiliary initialisation {init!r}; use one of {', '.join(INITS)}")
        self.init = init
        self.drop_path_rate = check_drop_path(drop_path_rate)

    @override
    def initialize(self, row: AncestryAdapter, ancestry: AncestryAdapter) -> None:
        if self.init == "ancestry":
            copy_from_ancestry(row, ancestry)


class DepthReduced(_SingleRow):
    """``depth`` blocks at the ancestry's width and heads."""

    name = "depth-reduced"

    def __init__(self, depth: int, init: str = "random", drop_path_rate: float | None = None) -> None:
        super().__init__(init, drop_path_rate)
        self.depth = int(depth)

    @classmethod
    @override
    def example(cls, *, ancestry: RowShape, **context) -> DepthReduced:  # noqa: ANN003
        """Half the ancestry's blocks, copied from it (``init="ancestry"``)."""
        return cls(max(1, ancestry.depth // 2), init="ancestry")

    @override
    def rows(self, ancestry: RowShape) -> list[RowShape]:
        _single_stage(self.name, ancestry)
        if not 1 <= self.depth < ancestry.depth:
            raise ConfigError(
                f"a depth-reduced auxiliary needs 1 <= depth < {ancestry.depth} (the ancestry's), got {self.depth}"
            )
        return [RowShape(self.depth, ancestry.width, ancestry.heads)]


class WidthReduced(_SingleRow):
    """``depth`` blocks at a lower ``width`` with ``heads`` heads."""

    name = "width-reduced"

    def __init__(self, depth: int, width: int, heads: int, init: str = "random",
                 drop_path_rate: float | None = None) -> None:
        super().__init__(init, drop_path_rate)
        if init == "ancestry":
            raise ConfigError("initialisation 'ancestry' copies blocks and needs the ancestry's width; use 'random'")
        self.shape = RowShape(int(depth), int(width), int(heads))

    @classmethod
    @override
    def example(cls, *, ancestry: RowShape, **context) -> WidthReduced:  # noqa: ANN003
        """Half the ancestry's depth and width."""
        return cls(*_half(ancestry))

    @override
    def rows(self, ancestry: RowShape) -> list[RowShape]:
        _single_stage(self.name, ancestry)
        if self.shape.width >= ancestry.width:
            raise ConfigError(
                f"a width-reduced auxiliary needs width < {ancestry.width} (the ancestry's), got {self.shape.width}"
            )
        if self.shape.depth > ancestry.depth:
            raise ConfigError(f"auxiliary {self.shape} is deeper than the ancestry {ancestry}")
        return [self.shape]


class PoolDesign(_RowArch):
    """A group of auxiliary models, one per row, sorted by width.

    ``rows`` is a ``DEPTHxWIDTH:HEADS`` list or row shapes. A row at the
    ancestry's width is depth-reduced, any other width-reduced. ``init``
    applies to rows at the ancestry's width; narrower rows start random.
    """

    name = "pool"

    def __init__(self, rows: str | Sequence[RowShape], init: str = "random", drop_path_rate: float | None = None) -> None:
        if init not in INITS:
            raise ConfigError(f"unknown auxiliary initialisation {init!r}; use one of {', '.join(INITS)}")
        shapes = parse_rows(rows) if isinstance(rows, str) else list(rows)
        self.shapes = sorted(shapes, key=lambda s: s.width)
        self.init = init
        self.drop_path_rate = check_drop_path(drop_path_rate)

    @classmethod
    @override
    def example(cls, *, ancestry: RowShape, **context) -> PoolDesign:  # noqa: ANN003
        """The paper's two rows at half the ancestry's depth: half width, and full width copied from the ancestry
        (a hierarchical ancestry: each stage at half its depth, the narrow row at half the width, both random)."""
        if ancestry.stages:
            halved = [(max(1, d // 2), w, h) for d, w, h in ancestry.stage_shapes]
            narrow = [(d, max(1, w // 2), h // 2 if h % 2 == 0 else h) for d, w, h in halved]
            return cls([RowShape.staged(narrow), RowShape.staged(halved)])
        depth, width, heads = _half(ancestry)
        return cls([RowShape(depth, width, heads), RowShape(depth, ancestry.width, ancestry.heads)], init="ancestry")

    def designs(self, ancestry: RowShape) -> list[AuxiliaryDesign]:
        """One single-row design per row, in width order."""
        out: list[AuxiliaryDesign] = []
        for s in self.shapes:
            if s.stages or ancestry.stages:
                out.append(StagedRow(s, self.init if s.stage_shapes == ancestry.stage_shapes else "random"))
                continue
            if s.width == ancestry.width:
                if s.heads != ancestry.heads:
                    raise ConfigError(
                        f"row {s} has the ancestry's width but {s.heads} heads instead of {ancestry.heads}"
                    )
                out.append(DepthReduced(s.depth, self.init))
            else:
                out.append(WidthReduced(s.depth, s.width, s.heads))
        return out

    @override
    def rows(self, ancestry: RowShape) -> list[RowShape]:
        return [r for d in self.designs(ancestry) for r in d.rows(ancestry)]

    @override
    def initialize(self, row: AncestryAdapter, ancestry: AncestryAdapter) -> None:
        if self.init == "ancestry" and row.shape.stage_shapes == ancestry.shape.stage_shapes:
            copy_from_ancestry(row, ancestry)
        elif self.init == "ancestry" and not row.shape.stages and row.shape.width == ancestry.shape.width:
            copy_from_ancestry(row, ancestry)


class StagedRow(_SingleRow):
    """One auxiliary of a hierarchical family, per-stage depths and widths given
    (``3x128/4x256/6x512/3x1024`` for a width-halved ResNet-50).

    Its stages must match the ancestry's in number, none deeper than the
    ancestry's; widths at most the ancestry's, stage by stage. ``init
    "ancestry"`` copies the ancestry only for a row of the ancestry's own
    shape; other rows start random.
    """

    name = "staged-row"

    def __init__(self, shape: RowShape | str, init: str = "random", drop_path_rate: float | None = None) -> None:
        super().__init__(init, drop_path_rate)
        self.shape = parse_rows(shape)[0] if isinstance(shape, str) else shape

    @classmethod
    def example(cls, *, ancestry: RowShape, **context) -> StagedRow:  # noqa: ANN003
        """The ancestry's stages at half their width (at least 1)."""
        return cls(RowShape.staged([(d, max(1, w // 2), h // 2 if h % 2 == 0 and h else h) for d, w, h in ancestry.stage_shapes]))

    def rows(self, ancestry: RowShape) -> list[RowShape]:
        mine, theirs = self.shape.stage_shapes, ancestry.stage_shapes
        if len(mine) != len(theirs):
            raise ConfigError(f"auxiliary {self.shape} has {len(mine)} stages, the ancestry {ancestry} has {len(theirs)}")
        for i, ((d, w, _), (ad, aw, _)) in enumerate(zip(mine, theirs)):
            if d > ad or w > aw:
                raise ConfigError(
                    f"auxiliary {self.shape}: stage {i} ({d}x{w}) is deeper or wider than the ancestry's ({ad}x{aw})"
                )
        if mine == theirs:
            raise ConfigError(f"auxiliary {self.shape} is the ancestry's own shape: reduce a depth or a width")
        return [self.shape]
