"""stitchkit: many variable-sized networks from one trained model, by stitching."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DuplicateComponentError,
    PathError,
    PluginError,
    PoolFormatError,
    StitchkitError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .interfaces import (
    AncestryAdapter,
    AuxiliaryDesign,
    DistillationLoss,
    InitContext,
    Method,
    PathSampler,
    StitchInitializer,
    TapRequest,
    Taps,
)
from .pool import Pool
from .registry import Registry, default_registry
from .spec import Path, RowShape, Segment, StitchSpec
from .stitched import Descendant
from .storage import export_descendant, load_descendant, load_exported, load_pool, save_pool

if TYPE_CHECKING:  # the registry shortcuts, resolved on first use by __getattr__ below
    from .registry import (
        create_ancestry, create_design, create_initializer, create_loss, create_method, create_sampler,
        list_ancestries, list_designs, list_initializers, list_losses, list_methods, list_samplers,
    )

#: ``list_<kind>s(pattern="*")`` and ``create_<kind>(name, *args, **kwargs)`` over the default registry,
#: the way timm exports ``list_models`` / ``create_model``.
_REGISTRY_SHORTCUTS = (
    "create_ancestry", "create_design", "create_initializer", "create_loss", "create_method", "create_sampler",
    "list_ancestries", "list_designs", "list_initializers", "list_losses", "list_methods", "list_samplers",
)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_SHORTCUTS:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'stitchkit' has no attribute {name!r}")


try:
    __version__ = version("stitchkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AncestryAdapter", "AuxiliaryDesign", "BudgetError", "CheckpointError", "ConfigError",
    "Descendant", "DistillationLoss", "DuplicateComponentError", "InitContext", "Method",
    "Path", "PathError", "PathSampler", "PluginError", "Pool", "PoolFormatError", "Registry",
    "RowShape", "Segment", "StitchInitializer", "StitchSpec", "StitchkitError", "TapRequest",
    "Taps", "UnknownComponentError", "default_registry", "export_descendant", "hookimpl", "load_descendant",
    "load_exported", "load_pool", "save_pool", "__version__", *_REGISTRY_SHORTCUTS,
]
