"""Model folders in the layout timm and the Hugging Face Hub load: ``config.json``, ``model.safetensors``, ``README.md``.

Why: ``timm.create_model("local-dir:DIR", pretrained=True)`` (and ``hf-hub:ORG/NAME``
for the same folder uploaded) is how timm users share and load weights. A
single-row descendant is a plain timm network, so its folder is one timm loads
with its preprocessing and class names; a stitched descendant's folder holds a
stitchkit descendant file that :func:`stitchkit.io.storage.load_exported` reads.
The row's adapter says which timm model it is (``timm_model_args``); this module
writes the config, :mod:`stitchkit.apps.hub` writes whole folders.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from ..core.errors import ConfigError, FileError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
#: Everything an export folder holds; a folder holding anything else is never replaced.
FOLDER_FILES = (WEIGHTS, CONFIG, CARD)

def timm_model_config(adapter: str, arch: Mapping[str, Any], registry: Any = None) -> tuple[str, dict[str, Any]]:
    """The timm registry name and the JSON keyword arguments that rebuild a row as its own timm model,
    as the row's adapter declares them (:meth:`~stitchkit.core.interfaces.AncestryAdapter.timm_model_args`).

    ``timm.create_model(name, **model_args)`` builds exactly the row's network
    (for ``timm-vit``: ``VisionTransformer(**arch)``), which is what a ``local-dir:``
    folder's ``config.json`` must say (``architecture``, ``model_args``).
    """
    from ..core.registry import default_registry

    registry = registry if registry is not None else default_registry()
    return registry.ancestry(adapter).timm_model_args(arch)


def timm_folder_config(
    adapter: str, arch: Mapping[str, Any], preprocessing: Mapping[str, Any] | None, classes: list[str] | None,
    *, width: int, stitchkit: Mapping[str, Any],
) -> dict[str, Any]:
    """``config.json`` of a single-row descendant: what timm's ``local-dir:``/``hf-hub:`` loader reads.

    ``pretrained_cfg`` carries the preprocessing the pool was trained with
    (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``),
    ``num_classes`` and ``label_names``; ``stitchkit`` records where the weights came from.
    """
    name, model_args = timm_model_config(adapter, arch)
    num_classes = int(arch.get("num_classes", 0))
    pre = dict(preprocessing or {})
    in_chans = int(arch.get("in_chans", 3))
    img = arch.get("img_size")
    if "input_size" not in pre and img is not None:
        side = [img, img] if isinstance(img, int) else list(img)
        pre["input_size"] = [in_chans, *side]
    pretrained_cfg: dict[str, Any] = {**pre, "num_classes": num_classes}
    config: dict[str, Any] = {"architecture": name, "num_classes": num_classes, "num_features": int(width)}
    if arch.get("global_pool"):
        config["global_pool"] = arch["global_pool"]
    if classes:
        if len(classes) != num_classes:
            raise ConfigError(f"the pool records {len(classes)} class names for a {num_classes}-class head")
        config["label_names"] = list(classes)
    config.update(model_args=model_args, pretrained_cfg=pretrained_cfg, stitchkit=dict(stitchkit))
    return config


def descendant_folder_config(
    preprocessing: Mapping[str, Any] | None, classes: list[str] | None, *, stitchkit: Mapping[str, Any]
) -> dict[str, Any]:
    """``config.json`` of a stitched descendant: no timm architecture builds it, stitchkit does.

    It still carries timm's ``pretrained_cfg`` keys (preprocessing, classes) so a
    reader of the folder learns the model's input without opening the weights.
    """
    config: dict[str, Any] = {"library_name": "stitchkit"}
    if classes:
        config["label_names"] = list(classes)
        config["num_classes"] = len(classes)
    if preprocessing:
        config["pretrained_cfg"] = dict(preprocessing)
    config["stitchkit"] = dict(stitchkit)
    return config


def weights_in(path: str | os.PathLike[str]) -> pathlib.Path:
    """The weights file a path names: the path itself, or ``model.safetensors`` in an export folder."""
    p = pathlib.Path(path)
    if p.is_dir():
        weights = p / WEIGHTS
        if not weights.is_file():
            raise FileError(f"{p}: a folder without {WEIGHTS}; give a stitchkit export folder (stitchkit export --hf) or a file")
        return weights
    return p


def dumps(config: Mapping[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, allow_nan=False) + "\n").encode("utf-8")
