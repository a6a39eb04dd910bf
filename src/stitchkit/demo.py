"""``stitchkit demo``: Learngene Pool vs SN-Net at equal storage, on real digits, on a CPU.

One run trains a small 12-block ancestry on scikit-learn's handwritten
digits, builds a Learngene Pool from it (two distilled 6-block rows, width
ratio 4) and an SN-Net of two anchors with the same shapes trained from
scratch (so both pools store exactly the same parameters), fine-tunes both
with the same budget, evaluates every descendant of both and writes the pool
files, a markdown report and an accuracy plot. Both methods are reached
through the registry by name, like any plugin.

Every phase is resumable: rerunning the same command continues where a
killed run stopped and skips finished phases.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .compare import collect, markdown_report, plot_accuracy
from .engine.config import load_config, resolve, section
from .engine.model import train_model
from .errors import ConfigError, StitchkitError
from .files import OutputLock, copy_atomic, write_text_atomic
from .registry import Registry, default_registry
from .spec import parse_rows

METHODS = ("learngene-pool", "snnet")


@dataclass
class DemoConfig:
    """The ``[demo]`` section."""

    #: Learngene Pool auxiliary rows = SN-Net anchor shapes (equal storage).
    rows: str = "6x16:1,6x64:4"
    ancestry_epochs: int = 25
    #: Learngene Pool distillation epochs per row = SN-Net anchor-training epochs per anchor.
    auxiliary_epochs: int = 15
    #: Fine-tuning epochs of both pools.
    finetune_epochs: int = 10
    finetune_lr: float = 5e-4
    learngene_initializer: str = "tm"
    #: Options of the Learngene Pool initializer, e.g. ``--set demo.learngene_initializer_args.ridge=0.05`` (``tm-ls``).
    learngene_initializer_args: dict[str, Any] = field(default_factory=dict)
    snnet_initializer: str = "ls"
    #: Options of the SN-Net initializer, e.g. ``--set demo.snnet_initializer_args.max_images=50``.
    snnet_initializer_args: dict[str, Any] = field(default_factory=dict)
    #: Cap on optimizer steps per phase (0: none); the test suite's fast demo uses it.
    max_steps: int = 0

    def validate(self, where: str = "demo") -> None:
        try:
            parse_rows(self.rows)
        except StitchkitError as exc:
            raise ConfigError(f"{where}.rows: {exc}") from None
        for key in ("ancestry_epochs", "auxiliary_epochs", "finetune_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_steps < 0:
            raise ConfigError(f"{where}.max_steps must be >= 0, got {self.max_steps}")
        if self.finetune_lr <= 0:
            raise ConfigError(f"{where}.finetune_lr must be positive, got {self.finetune_lr}")


def default_config_path() -> pathlib.Path:
    return pathlib.Path(str(resources.files("stitchkit") / "configs" / "demo.toml"))


def method_configs(config: dict[str, Any], demo: DemoConfig, ancestry: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The two build configs: same data, same [train], same budgets, same teacher."""
    rows = parse_rows(demo.rows)
    patch = config["model"]["patch_size"]
    base = {"data": config["data"], "train": config["train"]}
    cap = {"max_steps": demo.max_steps} if demo.max_steps else {}
    phase = {"epochs": demo.auxiliary_epochs, **cap}
    finetune = {"epochs": demo.finetune_epochs, "lr": demo.finetune_lr, **cap}
    return {
        "learngene-pool": {
            "method": "learngene-pool",
            **base,
            "learngene": {
                "ancestry": str(ancestry),
                "rows": demo.rows,
                "initializer": demo.learngene_initializer,
                "initializer_args": dict(demo.learngene_initializer_args),
                "distill": phase,
                "finetune": finetune,
            },
        },
        "snnet": {
            "method": "snnet",
            **base,
            "snnet": {
                "anchors": [{"shape": str(r), "patch_size": patch, "train": True} for r in rows],
                "initializer": demo.snnet_initializer,
                "initializer_args": dict(demo.snnet_initializer_args),
                "teacher": str(ancestry),
                "anchor_training": phase,
                "finetune": finetune,
            },
        },
    }


def run_demo(
    out_dir: str | os.PathLike[str] = "stitchkit-demo",
    overrides: Sequence[str] = (),
    *,
    config_path: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Run the demo; return a summary (files written, storage, phase times)."""
    registry = registry or default_registry()
    for name in METHODS:
        registry.get("method", name)  # fail before any training if a method plugin is missing
    out = pathlib.Path(out_dir)
    raw = load_config(config_path or default_config_path(), overrides)
    demo = section(raw, "demo", DemoConfig)
    registry.check("initializer", demo.learngene_initializer, demo.learngene_initializer_args,
                   where="demo.learngene_initializer_args")
    registry.check("initializer", demo.snnet_initializer, demo.snnet_initializer_args, where="demo.snnet_initializer_args")
    # the whole config, both methods' included, before the first phase
    for name, cfg in method_configs(raw, demo, out / "ancestry" / "ancestry.safetensors").items():
        if "snnet" in cfg:  # the teacher is the ancestry this demo trains first; the check must not need it
            cfg["snnet"]["teacher"] = "largest-anchor"
        registry.method(name).check_config(resolve(cfg), registry=registry)
    with OutputLock(out, "stitchkit demo"):
        return _run_demo(out, raw, demo, registry)


def _run_demo(out: pathlib.Path, raw: dict[str, Any], demo: DemoConfig, registry: Registry) -> dict[str, Any]:
    phases: list[tuple[str, float]] = []

    t0 = time.perf_counter()
    cap = {"max_steps": demo.max_steps} if demo.max_steps else {}
    ancestry_cfg = {k: raw[k] for k in ("data", "model", "train")}
    ancestry_cfg["train"] = {**raw["train"], "epochs": demo.ancestry_epochs, **cap}
    ancestry = train_model(resolve(ancestry_cfg), out / "ancestry", name="ancestry")
    phases.append(("train the 12-block ancestry", time.perf_counter() - t0))

    pools: dict[str, pathlib.Path] = {}
    for name, cfg in method_configs(raw, demo, ancestry).items():
        t0 = time.perf_counter()
        built = registry.method(name).build(resolve(cfg), out_dir=out / name, registry=registry)
        pools[name] = out / f"{name}.safetensors"
        copy_atomic(pathlib.Path(built), pools[name])
        label = {"learngene-pool": "Learngene Pool: distil rows, TM init, fine-tune, evaluate",
                 "snnet": "SN-Net: train anchors, LS init, fine-tune, evaluate"}[name]
        phases.append((label, time.perf_counter() - t0))

    t0 = time.perf_counter()
    infos = collect({"Learngene Pool": pools["learngene-pool"], "SN-Net": pools["snnet"]})
    storages = {k: v["storage_params"] for k, v in infos.items()}
    if len(set(storages.values())) != 1:
        raise StitchkitError(f"the demo's pools should store equal parameters, got {storages}")
    plot = plot_accuracy(infos, out / "accuracy.png", title="Digits: accuracy of every descendant")
    notes = [
        f"Data: scikit-learn digits (8x8 upscaled to {raw['data']['img_size']}x{raw['data']['img_size']}), "
        "fixed seeded splits; accuracy is top-1 on the test split.",
        f"Ancestry: {raw['model']['depth']} blocks, width {raw['model']['embed_dim']}, trained {demo.ancestry_epochs} epochs.",
        f"Rows / anchors: {demo.rows}; {demo.auxiliary_epochs} epochs of distillation (Learngene Pool) or "
        f"training from scratch (SN-Net) each; {demo.finetune_epochs} fine-tuning epochs for both.",
        f"Stitch initialisation: {demo.learngene_initializer} (Learngene Pool), {demo.snnet_initializer} (SN-Net).",
        "Both pools store exactly the same number of parameters (rows + stitch layers).",
        "At this scale TM-initialised stitches trail LS ones (benchmarks/RESULTS.md, over 3 seeds); "
        "rerun with --set demo.learngene_initializer=ls to see Learngene Pool with LS stitches.",
    ]
    phases.append(("report and plot", time.perf_counter() - t0))
    report = markdown_report(infos, title="stitchkit demo: Learngene Pool vs SN-Net at equal storage",
                             phases=phases, notes=notes, plot=plot.name)
    write_text_atomic(out / "report.md", report)
    summary = {
        "out_dir": str(out),
        "ancestry": str(ancestry),
        "pools": {k: str(v) for k, v in pools.items()},
        "report": str(out / "report.md"),
        "plot": str(plot),
        "storage_params": storages,
        "phases": [{"phase": p, "seconds": s} for p, s in phases],
        "total_seconds": sum(s for _, s in phases),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
