"""The ``[model]`` section: a network shaped for the data (channels, image size, classes), and its file.

:func:`build_model` makes an ancestry or an anchor for the data's
:class:`~stitchkit.engine.data.DataSpec`; :func:`save_model` writes it as one
safetensors file whose metadata says how to rebuild it (:func:`load_model`).
Training it is :func:`stitchkit.engine.standalone.train_model`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..core.errors import ConfigError, PoolFormatError, StitchkitError
from ..core.interfaces import AncestryAdapter
from ..io.header import HF_FORMAT, KIND_KEY, MODEL_FORMAT, check_digest, file_kind, stamp
from .config import section, write_bytes_atomic
from .data import DataSpec


@dataclass
class ModelConfig:
    """The ``[model]`` section: any family by ``adapter`` and ``arch`` (the adapter's architecture) or by
    ``timm_name`` (the adapter then defaults to the one the plugins name for the model); with neither,
    a timm ViT shaped by the ViT shorthand fields (depth, embed_dim, num_heads, patch_size, mlp_ratio)."""

    #: The ancestry adapter (family): "auto" (default: the adapter the plugins name for timm_name, or
    #: "timm-vit" for the ViT shorthand), "timm-vit", "timm-swin", "timm-resnet", "timm-convnext", "timm-levit", a plugin's.
    adapter: str = "auto"
    #: The adapter's arch (e.g. timm-resnet: block, layers, channels); num_classes, in_chans and img_size
    #: come from the data. Needs a named adapter.
    arch: dict[str, Any] = field(default_factory=dict)
    #: A registered model name, e.g. "deit_base_patch16_224" or "resnet50" ("" builds from arch or the ViT shorthand).
    timm_name: str = ""
    #: Download timm's pretrained weights (needs network access; timm_name only).
    pretrained: bool = False
    #: Local weights to start from (safetensors, or a weights-only .pth, optionally under 'model' /
    #: 'state_dict'); with timm_name, adapted by timm to the data like pretrained weights; with an
    #: arch, they must fit it exactly.
    checkpoint: str = ""
    depth: int = 12
    embed_dim: int = 64
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    #: Stochastic depth (timm's drop_path_rate) for every family that has it.
    drop_path_rate: float = 0.0

    def validate(self, where: str = "model") -> None:
        from ..core import limits

        for key, top, name in (("depth", limits.MAX_DEPTH, "MAX_DEPTH"), ("embed_dim", limits.MAX_WIDTH, "MAX_WIDTH"),
                               ("num_heads", limits.MAX_HEADS, "MAX_HEADS"), ("patch_size", limits.MAX_IMG_SIZE, "MAX_IMG_SIZE")):
            limits.check_int(getattr(self, key), f"{where}.{key}", maximum=top, limit=name)
        limits.check_number(self.mlp_ratio, f"{where}.mlp_ratio", minimum=0.0, maximum=64.0, exclusive_minimum=True)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{where}: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads} (a ViT's head_dim rule)")
        if self.pretrained and not self.timm_name:
            raise ConfigError(f"{where}.pretrained needs {where}.timm_name (which timm model's weights to download)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"{where}.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.arch and self.timm_name:
            raise ConfigError(f"{where}: give timm_name or arch, not both (arch is the whole architecture)")
        if self.arch and self.adapter == "auto":
            raise ConfigError(f"{where}.arch needs {where}.adapter, the family the arch describes (e.g. adapter = \"timm-resnet\")")
        if self.adapter not in ("auto", "timm-vit") and not (self.timm_name or self.arch):
            raise ConfigError(f"{where}: adapter {self.adapter!r} needs {where}.timm_name or {where}.arch (the network's architecture)")

    def adapter_name(self, registry: Any) -> str:
        """The adapter this section builds through (``auto`` resolved by the plugins' ``ancestry_for_model``)."""
        if self.adapter != "auto":
            return self.adapter
        return registry.ancestry_for(self.timm_name) if self.timm_name else "timm-vit"

    def vit_arch(self, spec: DataSpec) -> dict[str, Any]:
        """The timm-vit arch the ViT shorthand fields describe (no timm_name, no arch)."""
        if spec.img_size % self.patch_size:
            raise ConfigError(f"model.patch_size {self.patch_size} does not divide data.img_size {spec.img_size}")
        return {"patch_size": self.patch_size, "embed_dim": self.embed_dim, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelConfig:
        return section(config, "model", cls)


def build_model(spec: DataSpec, cfg: ModelConfig, *, seed: int = 0, registry: Any = None) -> AncestryAdapter:
    """A randomly initialised (seeded) or loaded network for data of shape ``spec``, built through its
    registered adapter: by name (``from_name``, timm adapting the starting weights to the data) or by arch
    (``from_arch``; a checkpoint must then fit exactly)."""
    cfg.validate()
    if registry is None:
        from ..core.registry import default_registry

        registry = default_registry()
    name = cfg.adapter_name(registry)
    cls = registry.ancestry(name)
    data_keys: dict[str, Any] = {"num_classes": spec.num_classes, "in_chans": spec.in_chans, "img_size": spec.img_size}
    if cfg.drop_path_rate:  # only when set: a plugin's family need not know the key
        data_keys["drop_path_rate"] = cfg.drop_path_rate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.timm_name:
            return cls.from_name(cfg.timm_name, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint or None, **data_keys)
        arch = dict(cfg.arch) if cfg.arch else cfg.vit_arch(spec)
        if "drop_path_rate" in arch and "drop_path_rate" in data_keys and arch["drop_path_rate"] != cfg.drop_path_rate:
            raise ConfigError(f"model: drop_path_rate is {cfg.drop_path_rate} but model.arch says {arch['drop_path_rate']}; set one")
        adapter = cls.from_arch({**arch, **data_keys})
        if cfg.checkpoint:
            from ..io.state_dicts import load_strict

            load_strict(adapter.model, cfg.checkpoint, f"a {name} network of shape {adapter.shape}",
                        "save the file from a model of this arch, or give its timm_name so timm adapts it")
            adapter.weights_record = {"source": "file", "file": cfg.checkpoint, "adapted": []}
    return adapter


def save_model(adapter: AncestryAdapter, path: str | os.PathLike[str], info: Mapping[str, Any] | None = None) -> pathlib.Path:
    """One network as safetensors, with the adapter name and arch in the metadata (atomic)."""
    path = pathlib.Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter.model.state_dict().items()}
    meta = {
        KIND_KEY: MODEL_FORMAT,  # `format` is "pt" (what Hugging Face loaders check), the digest covers the rest
        "version": "2",
        "adapter": adapter.name,
        "arch": json.dumps(adapter.arch(), sort_keys=True),
        "info": json.dumps(dict(info or {}), sort_keys=True),
    }
    write_bytes_atomic(path, save(tensors, metadata=stamp(meta)))
    return path


def check_model_metadata(path: pathlib.Path, meta: dict[str, str]) -> None:
    """A model file's kind, and (version 2: ``format: pt``) its metadata digest; version 1 named the kind in ``format``."""
    if file_kind(meta) != MODEL_FORMAT:
        found = meta.get(KIND_KEY) if meta.get("format") == HF_FORMAT else meta.get("format")
        raise PoolFormatError(path, f"not a stitchkit model file (metadata format {found!r}); train one with train_model")
    if meta.get("format") == HF_FORMAT:
        check_digest(path, meta)


def load_model(path: str | os.PathLike[str], registry: Any = None) -> AncestryAdapter:
    """A network saved by :func:`save_model` (e.g. by ``train_model``), rebuilt through its adapter."""
    from ..io.files import check_regular_file

    path = pathlib.Path(path)
    try:
        check_regular_file(path, "model file")
    except StitchkitError as exc:
        raise PoolFormatError(path, str(exc).removeprefix(f"{path}: ")) from None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            check_model_metadata(path, meta)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        arch = json.loads(meta["arch"])
        name = meta["adapter"]
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise PoolFormatError(path, f"unreadable model file ({exc})") from exc
    if registry is None:
        from ..core.registry import default_registry

        registry = default_registry()
    adapter = registry.ancestry(name).from_arch(arch)
    from ..io.state_dicts import first_difference, shapes

    problem = first_difference(shapes(tensors), shapes(adapter.model.state_dict()))
    if problem is not None:
        raise PoolFormatError(path, f"weights do not fit the stored {name} arch ({problem})")
    adapter.model.load_state_dict(tensors, strict=True)
    return adapter


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``info`` stored with a model file (data spec, evaluation, config)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return json.loads((fh.metadata() or {}).get("info", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise PoolFormatError(path, f"unreadable model file ({exc})") from exc
