"""Run configs: TOML + overrides, validation with close matches, resolved copies, build_command."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field

import pytest

import stitchkit
from stitchkit.engine.transforms import TransformConfig
from stitchkit.cli.build import build_command
from stitchkit.engine.config import (
    apply_overrides,
    check_keys,
    config_hash,
    differing_keys,
    flatten,
    parse_override,
    section,
)
from stitchkit.engine.settings import load_config, resolve
from stitchkit.engine.data import DataConfig
from stitchkit.engine.trainer import TrainConfig, run_identity
from stitchkit.core.errors import ConfigError
from stitchkit.core.interfaces import Method
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape, single_row_path
from stitchkit.io.storage import save_pool
from stitchkit.pool.pool import Pool

from helpers import tiny_row


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train.lr=1e-3", ["train", "lr"], 0.001),
        ("train.epochs = 7", ["train", "epochs"], 7),
        ("train.progress=false", ["train", "progress"], False),
        ("data.source=digits", ["data", "source"], "digits"),  # bare word: a string
        ('data.root="/x/y z"', ["data", "root"], "/x/y z"),
        ("train.betas=[0.9, 0.95]", ["train", "betas"], [0.9, 0.95]),
        ("a.b.c={x = 1}", ["a", "b", "c"], {"x": 1}),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=1", "x=[1,"])
def test_parse_override_errors(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_apply_overrides_creates_tables_and_refuses_type_clash():
    cfg = {"train": {"lr": 1.0}}
    apply_overrides(cfg, ["train.lr=2", "learngene.distill.epochs=3"])
    assert cfg == {"train": {"lr": 2}, "learngene": {"distill": {"epochs": 3}}}
    with pytest.raises(ConfigError, match="train.lr is a value"):
        apply_overrides(cfg, ["train.lr.x=1"])
    with pytest.raises(ConfigError, match="is a table"):
        apply_overrides(cfg, ["train=1"])


def test_load_config_resolves_defaults_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('method = "x"\n[train]\nlr = 1e-3\nepochs = 2\n[data]\nimg_size = 16\n[mine]\nanything = 1\n')
    cfg = load_config(path, ["train.epochs=5", "data.in_chans=3"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["lr"] == 0.001
    assert cfg["train"]["batch_size"] == TrainConfig().batch_size  # default filled in
    transform = json.loads(json.dumps(TransformConfig().__dict__))  # the [data.transform] table, defaults filled in too
    assert cfg["data"] == {**json.loads(json.dumps(DataConfig().__dict__)), "img_size": 16, "in_chans": 3, "transform": transform}
    assert cfg["mine"] == {"anything": 1}  # method sections pass through for the method to check
    # the resolved config is itself a config: reloading it gives the same thing
    saved = tmp_path / "resolved.json"
    saved.write_text(json.dumps(cfg))
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    "text, words",
    [
        ("[train]\nlerning_rate = 1\n", ["train", "'lerning_rate'", "known keys"]),
        ("[train]\nepohcs = 1\n", ["did you mean 'epochs'"]),
        ("[train]\nepochs = 1.5\n", ["train.epochs", "integer"]),
        ("[train]\nlr = \"fast\"\n", ["train.lr", "number"]),
        ("[train]\nprogress = 1\n", ["train.progress", "true or false"]),
        ("[train]\nprecision = \"fp16\"\n", ["train.precision", "bf16"]),
        ("[data]\nsource = \"cifar\"\n", ["data.source"]),
        ("[model]\nembed_dim = 30\nnum_heads = 4\n", ["embed_dim 30", "num_heads 4"]),
        ("methd = \"x\"\n", ["unknown top-level key 'methd'", "did you mean 'method'"]),
        ("train = 3\n", ["'train' must be a table"]),
        ("[train\n", ["not a valid TOML"]),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_section_and_check_keys_for_method_sections():
    @dataclass
    class Mine:
        rows: str = "6x192:3"
        alpha: float = 0.5
        levels: str | int = "auto"
        terms: list[str] = field(default_factory=lambda: ["att"])

    got = section({"mine": {"alpha": 1, "levels": 3}}, "mine", Mine)
    assert got == Mine(alpha=1.0, levels=3) and isinstance(got.alpha, float)
    with pytest.raises(ConfigError, match=r"mine: unknown key 'alpah'; did you mean 'alpha'"):
        section({"mine": {"alpah": 1}}, "mine", Mine)
    with pytest.raises(ConfigError, match=r"mine.terms\[1\]"):
        section({"mine": {"terms": ["att", 3]}}, "mine", Mine)
    with pytest.raises(ConfigError, match="known keys: a, b"):
        check_keys({"c": 1}, ["b", "a"], "where")


def test_identity_hash_and_differing_keys():
    cfg = resolve({"train": {"lr": 0.1}})
    train = TrainConfig(lr=0.1)
    a = run_identity(cfg, "p", train)
    # reporting-only keys do not change the identity
    b = run_identity(resolve({"train": {"lr": 0.1, "log_every": 3, "checkpoint_every": 9}, "data": {"num_workers": 2}}), "p", TrainConfig(lr=0.1, log_every=3))
    assert config_hash(a) == config_hash(b)
    c = run_identity(resolve({"train": {"lr": 0.2}}), "p", TrainConfig(lr=0.2))
    assert differing_keys(a, c) == ["config.train.lr", "train.lr"]
    assert flatten({"a": {"b": 1, "c": {}}}) == {"a.b": 1, "a.c": {}}


class _Recorder(Method):
    """A throwaway method whose build records what it was given."""

    name = "recorder"
    calls: list = []

    def stitches(self, rows):
        return []

    def paths(self, rows, stitches):
        return []

    def build(self, config, *, out_dir, registry):
        _Recorder.calls.append((config, out_dir, registry))
        # a real one-row pool: `stitchkit build` writes the pool's model card from the file it returns
        row = tiny_row(RowShape(1, 8, 2))
        pool = Pool([row], [], [single_row_path(0, 1)], method=self.name)
        return save_pool(pool, out_dir / "pool.safetensors")


def _registry():
    reg = Registry(load_entrypoints=False)
    plugin = types.SimpleNamespace()

    @stitchkit.hookimpl
    def register_methods(register):
        register(_Recorder)

    plugin.register_methods = register_methods
    reg.register_plugin(plugin, name="recorder-plugin")
    return reg


def test_build_command_calls_the_method(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('method = "recorder"\n[train]\nepochs = 2\n')
    reg = _registry()
    _Recorder.calls.clear()
    out = build_command(path, ["train.lr=0.01"], out_dir=tmp_path / "out", registry=reg)
    assert out == tmp_path / "out" / "pool.safetensors"
    (config, out_dir, registry), = _Recorder.calls
    assert out_dir == tmp_path / "out" and registry is reg
    assert config["train"]["lr"] == 0.01 and config["train"]["epochs"] == 2
    assert json.loads((tmp_path / "out" / "resolved.json").read_text()) == config


def test_build_command_restart_clears_checkpoints(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'method = "recorder"\nout_dir = "{tmp_path / "o"}"\n')
    ckpt = tmp_path / "o" / "phase" / "checkpoints"
    ckpt.mkdir(parents=True)
    for name in ("step-00000001.json", "step-00000001.safetensors"):
        (ckpt / name).write_text("x")
    (tmp_path / "o" / "keep.txt").write_text("user file")
    build_command(path, [], resume=True, registry=_registry())
    assert len(list(ckpt.iterdir())) == 2
    build_command(path, [], resume=False, registry=_registry())
    assert list(ckpt.iterdir()) == [] and (tmp_path / "o" / "keep.txt").exists()


def test_build_command_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 1\n")
    with pytest.raises(ConfigError, match="no method given"):
        build_command(path, [], out_dir=tmp_path / "o", registry=_registry())
    path.write_text('method = "sequential"\n')
    with pytest.raises(ConfigError, match="defines paths only"):
        build_command(path, [], out_dir=tmp_path / "o", registry=_registry())
    path.write_text('method = "recorde"\n')
    with pytest.raises(stitchkit.UnknownComponentError, match="did you mean 'recorder'"):
        build_command(path, [], out_dir=tmp_path / "o", registry=_registry())


def test_shipped_engine_config_is_valid():
    import pathlib

    import stitchkit.engine

    path = pathlib.Path(stitchkit.engine.__file__).parents[1] / "configs" / "digits-ancestry.toml"
    cfg = load_config(path)
    assert cfg["model"]["depth"] == 12 and cfg["model"]["embed_dim"] == 64 and cfg["data"]["source"] == "digits"
