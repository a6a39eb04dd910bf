"""What the contracts see of a pool and of the registry, as Protocols.

The plugin interfaces (:mod:`stitchkit.core.interfaces`) hand a method or an
initializer the pool and the registry; typing them through these Protocols
keeps the core free of imports from the layers above it (the pool lives in
:mod:`stitchkit.pool`) and from its own registry module (which imports the
interfaces). :class:`stitchkit.pool.pool.Pool` and
:class:`stitchkit.core.registry.Registry` satisfy them; mypy checks that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .spec import Path, StitchSpec


class PoolView(Protocol):
    """A pool as initializers and methods use it: rows, stitch layers, paths and descendants."""

    adapters: list[Any]
    rows: nn.ModuleList
    stitch_specs: dict[str, StitchSpec]
    stitches: nn.ModuleDict
    paths: list[Path]
    method: str
    info: dict[str, Any]

    def descendant(self, key: Path | int | str, *, copy: bool = False) -> nn.Module: ...


class RegistryView(Protocol):
    """The registry as methods use it: components by kind and name, with their options checked."""

    def get(self, kind: str, name: str) -> type: ...

    def create(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any: ...

    def check(self, kind: str, name: str, options: Mapping[str, Any] | None = None, where: str = "") -> type: ...

    def build(self, kind: str, name: str, *context: Any, options: Mapping[str, Any] | None = None, where: str = "") -> Any: ...

    def list(self, kind: str, pattern: str = "*") -> Sequence[str]: ...
