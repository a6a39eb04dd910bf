"""stitchkit: many variable-sized networks from one trained model, by stitching.

The public names below are imported on first use (PEP 562 module
``__getattr__``), so ``import stitchkit`` does not import torch: the command
line's ``--help``, ``--version`` and ``info`` answer in a fraction of torch's
import time.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .core.errors import (
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

if TYPE_CHECKING:  # the registry shortcuts, resolved on first use by __getattr__ like every public name
    from .core.registry import (
        create_ancestry, create_design, create_initializer, create_loss, create_method, create_sampler,
        list_ancestries, list_designs, list_initializers, list_losses, list_methods, list_samplers,
    )

#: ``list_<kind>s(pattern="*")`` and ``create_<kind>(name, *args, **kwargs)`` over the default registry,
#: the way timm exports ``list_models`` / ``create_model``.
_REGISTRY_SHORTCUTS = (
    "create_ancestry", "create_design", "create_initializer", "create_loss", "create_method", "create_sampler",
    "list_ancestries", "list_designs", "list_initializers", "list_losses", "list_methods", "list_samplers",
)

try:
    __version__ = version("stitchkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

#: public name -> the submodule that defines it (imported when the name is first used)
_LAZY: dict[str, str] = {
    "hookimpl": "core.hookspecs",
    **dict.fromkeys(
        ["AncestryAdapter", "AuxiliaryDesign", "DistillationLoss", "InitContext", "Method", "PathSampler",
         "StitchInitializer", "TapRequest", "Taps"],
        "core.interfaces",
    ),
    "Pool": "pool.pool",
    "Registry": "core.registry",
    "default_registry": "core.registry",
    **dict.fromkeys(["Path", "RowShape", "Segment", "StitchSpec"], "core.spec"),
    "Descendant": "pool.stitched",
    **dict.fromkeys(["import_checkpoint", "import_snnet"], "io.importing"),
    **dict.fromkeys(_REGISTRY_SHORTCUTS, "core.registry"),
    **dict.fromkeys(["export_descendant", "load_descendant", "load_exported", "load_pool", "save_pool"], "io.storage"),
    "export_hf": "apps.hub",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports these on first use
    from .core.hookspecs import hookimpl
    from .core.interfaces import (
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
    from .pool.pool import Pool
    from .core.registry import Registry, default_registry
    from .core.spec import Path, RowShape, Segment, StitchSpec
    from .io.importing import import_checkpoint, import_snnet
    from .pool.stitched import Descendant
    from .io.storage import export_descendant, load_descendant, load_exported, load_pool, save_pool
    from .apps.hub import export_hf


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stitchkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AncestryAdapter", "AuxiliaryDesign", "BudgetError", "CheckpointError", "ConfigError",
    "Descendant", "DistillationLoss", "DuplicateComponentError", "InitContext", "Method",
    "Path", "PathError", "PathSampler", "PluginError", "Pool", "PoolFormatError", "Registry",
    "RowShape", "Segment", "StitchInitializer", "StitchkitError", "TapRequest",
    "Taps", "UnknownComponentError", "default_registry", "export_descendant", "export_hf", "hookimpl", "import_checkpoint",
    "import_snnet", "load_descendant", "load_exported", "load_pool", "save_pool", "__version__", *_REGISTRY_SHORTCUTS,
]
