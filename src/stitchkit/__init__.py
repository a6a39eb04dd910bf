"""stitchkit: many variable-sized networks from one trained model, by stitching."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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
from .importing import import_checkpoint, import_snnet
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

try:
    __version__ = version("stitchkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AncestryAdapter", "AuxiliaryDesign", "BudgetError", "CheckpointError", "ConfigError",
    "Descendant", "DistillationLoss", "DuplicateComponentError", "InitContext", "Method",
    "Path", "PathError", "PathSampler", "PluginError", "Pool", "PoolFormatError", "Registry",
    "RowShape", "Segment", "StitchInitializer", "StitchSpec", "StitchkitError", "TapRequest",
    "Taps", "UnknownComponentError", "default_registry", "export_descendant", "hookimpl", "import_checkpoint", "import_snnet", "load_descendant",
    "load_exported", "load_pool", "save_pool", "__version__",
]
