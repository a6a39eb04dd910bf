"""The plugin contract: throwaway plugins, duplicate and unknown names, misspelled
hooks, entry-point discovery, broken-plugin isolation, autoload switch."""

from __future__ import annotations

import json
import sys
import textwrap
import types
from typing import Literal

import pytest

import stitchkit
from stitchkit.core.errors import ConfigError, DuplicateComponentError, PluginError, UnknownComponentError
from stitchkit.core.interfaces import StitchInitializer
from stitchkit.core.registry import AUTOLOAD_ENV, Registry


class Zeros(StitchInitializer):
    """Zero every stitch layer."""

    name = "zeros"

    def initialize(self, pool, context):
        for layer in pool.stitches.values():
            layer.weight.data.zero_()
            layer.bias.data.zero_()


def make_plugin(*classes, hook="register_initializers"):
    mod = types.ModuleType("throwaway")

    def impl(register):
        for c in classes:
            register(c)

    impl.__name__ = hook
    setattr(mod, hook, stitchkit.hookimpl(impl))
    return mod


def test_throwaway_plugin_is_listed_created_and_unregistered():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(make_plugin(Zeros), name="throwaway")
    assert "zeros" in reg.list("initializer")
    assert reg.list("initializer", "z*") == ["zeros"]
    assert reg.provider("initializer", "zeros") == "throwaway"
    assert isinstance(reg.create("initializer", "zeros"), Zeros)
    reg.unregister_plugin("throwaway")
    assert "zeros" not in reg.list("initializer")
    with pytest.raises(UnknownComponentError):
        reg.get("initializer", "zeros")


def test_unknown_name_lists_close_matches():
    reg = Registry(load_entrypoints=False)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("sampler", "unifrom")
    msg = str(info.value)
    assert "did you mean 'uniform'" in msg and "flops-grouped" in msg


def test_duplicate_names_name_both_plugins():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(make_plugin(Zeros), name="first-plugin")

    class Zeros2(Zeros):
        """Another zeros."""

    reg.register_plugin(make_plugin(Zeros2), name="second-plugin")
    with pytest.raises(DuplicateComponentError) as info:
        reg.create("initializer", "zeros")
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)
    assert reg.conflicts() == {("initializer", "zeros"): ["first-plugin", "second-plugin"]}
    # the rest of the registry still works, and removing one plugin resolves the conflict
    assert reg.create("sampler", "uniform", [stitchkit.Path((stitchkit.Segment(0, 0, 1),))])
    reg.unregister_plugin("second-plugin")
    assert isinstance(reg.create("initializer", "zeros"), Zeros)


def test_misspelled_hook_is_an_error():
    reg = Registry(load_entrypoints=False)
    bad = make_plugin(Zeros, hook="register_initialisers")
    with pytest.raises(PluginError, match="unknown hook 'register_initialisers'"):
        reg.register_plugin(bad, name="typo")
    assert reg.pm.get_plugin("typo") is None


def test_registering_a_wrong_class_is_an_error():
    reg = Registry(load_entrypoints=False)
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register_plugin(make_plugin(int), name="wrong")
    assert "wrong" not in {e.plugin for e in reg.entries()}


def _install_fake_distribution(tmp_path, dist, entry_points, modules):
    info = tmp_path / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[stitchkit]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))


GOOD = """
    import stitchkit
    from stitchkit.core.interfaces import StitchInitializer

    class Ones(StitchInitializer):
        "Set every stitch weight to one."
        name = "ones-from-entry-point"
        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.weight.data.fill_(1.0)

    @stitchkit.hookimpl
    def register_initializers(register):
        register(Ones)
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield tmp_path
    for name in ("sk_good_plugin", "sk_broken_plugin", "sk_raising_plugin", "sk_badsig_plugin", "sk_badinit_plugin"):
        sys.modules.pop(name, None)


def test_entry_point_plugin_is_found_and_broken_ones_are_isolated(fake_site):
    _install_fake_distribution(
        fake_site,
        "sk-fake-plugins",
        {
            "good": "sk_good_plugin",
            "broken": "sk_broken_plugin",
            "raising": "sk_raising_plugin",
        },
        {
            "sk_good_plugin": GOOD,
            "sk_broken_plugin": "import a_module_that_does_not_exist\n",
            "sk_raising_plugin": """
                import stitchkit
                @stitchkit.hookimpl
                def register_samplers(register):
                    raise RuntimeError("boom while registering")
            """,
        },
    )
    reg = Registry()
    assert reg.provider("initializer", "ones-from-entry-point") == "good"
    broken = {b.plugin: b for b in reg.broken}
    assert "ModuleNotFoundError" in broken["broken"].error
    assert broken["broken"].package == "sk-fake-plugins"
    assert "boom while registering" in broken["raising"].error
    assert "uniform" in reg.list("sampler")  # the core still loaded


def test_autoload_can_be_switched_off(fake_site, monkeypatch):
    _install_fake_distribution(fake_site, "sk-fake-good", {"good": "sk_good_plugin"}, {"sk_good_plugin": GOOD})
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert "ones-from-entry-point" not in Registry().list("initializer")
    assert "ones-from-entry-point" in Registry(load_entrypoints=True).list("initializer")


def test_shipped_methods_come_through_entry_points():
    reg = Registry(load_entrypoints=True)
    assert reg.provider("method", "sequential") == "stitchkit"
    for plugin, method in (("learngene-pool", "learngene-pool"), ("snnet", "snnet")):
        # a missing shipped plugin is a broken package: fail, never skip
        assert method in reg.list("method"), f"the shipped {plugin} plugin is not installed ({reg.broken})"
        assert reg.provider("method", method) == plugin


# --------------------------------------------------------------------------- options
def test_options_come_from_the_factory_signature():
    reg = Registry(load_entrypoints=True)
    opts = {(e.kind, e.name): [o.as_dict() for o in e.options] for e in reg.entries()}
    assert opts[("sampler", "flops-grouped")] == [{"name": "groups", "type": "int", "default": 4, "required": False}]
    assert opts[("sampler", "uniform")] == []  # paths and macs are context, not options
    assert opts[("initializer", "tm-ls")] == [{"name": "ridge", "type": "float", "default": 0.1, "required": False}]
    # losses are made by for_models(teacher, student, **options)
    assert [o["name"] for o in opts[("loss", "learngene")]] == ["levels", "tau", "terms", "layout", "reduction"]
    assert [o["name"] for o in opts[("loss", "block")]] == ["levels", "layout"]  # layout: the ancestry's feature layout
    assert [o["name"] for o in opts[("loss", "prediction")]] == ["tau", "reduction"]  # the base for_models defers to __init__
    assert opts[("design", "pool")][0] == {"name": "rows", "type": "str | Sequence[RowShape]", "default": None, "required": True}


def test_build_passes_options_and_refuses_unknown_ones():
    reg = Registry(load_entrypoints=True)
    assert reg.build("initializer", "tm-ls", options={"ridge": 0.25}).ridge == 0.25
    paths = [stitchkit.Path((stitchkit.Segment(0, 0, 1),))] * 5
    sampler = reg.build("sampler", "flops-grouped", paths, [1, 2, 3, 4, 5], options={"groups": 5})
    assert [len(g) for g in sampler.groups] == [1, 1, 1, 1, 1]
    loss = reg.build("loss", "learngene", stitchkit.RowShape(4, 32, 4), stitchkit.RowShape(2, 16, 2),
                     options={"terms": ["block"], "levels": 1})
    assert list(loss.losses) == ["block"] and loss.pairs == [(3, 1)]
    with pytest.raises(ConfigError) as info:
        reg.build("initializer", "tm-ls", options={"lam": 0.01}, where="learngene.initializer_args")
    assert str(info.value) == ("learngene.initializer_args: initializer 'tm-ls' has no option 'lam' "
                               "(accepted options: ridge (float, default 0.1))")
    with pytest.raises(ConfigError, match=r"initializer 'random' has no option 'seed' \(accepted options: none\)"):
        reg.check("initializer", "random", {"seed": 1})
    with pytest.raises(ConfigError, match=r"design 'pool' needs option\(s\) rows"):
        reg.check("design", "pool", {})


class Typed(StitchInitializer):
    """Every annotation form an option may have."""

    name = "typed"

    def __init__(self, ridge: float = 0.1, steps: int = 3, on: bool = True, label: str = "a",
                 cap: int | None = None, mode: Literal["fast", "exact"] = "fast", sizes: tuple[int, ...] = (1,),
                 pair: tuple[int, str] = (1, "a"), table: dict[str, float] | None = None, anything=None) -> None:
        self.options = dict(ridge=ridge, steps=steps, on=on, label=label, cap=cap, mode=mode, sizes=sizes, pair=pair,
                            table=table, anything=anything)

    def initialize(self, pool, context):
        pass


TYPED_CASES = [  # (option, value, accepted?): decided by hand from the annotation and TOML's value types
    ("ridge", 1, True), ("ridge", 0.5, True), ("ridge", "0.1", False), ("ridge", True, False), ("ridge", None, False),
    ("steps", 2, True), ("steps", 2.0, False), ("steps", False, False), ("steps", "2", False),
    ("on", False, True), ("on", 1, False), ("label", "b", True), ("label", 1, False),
    ("cap", None, True), ("cap", 4, True), ("cap", 4.5, False),
    ("mode", "exact", True), ("mode", "slow", False), ("sizes", [1, 2], True), ("sizes", [1, "2"], False),
    ("sizes", "12", False), ("pair", [2, "b"], True), ("pair", [2, 3], False), ("pair", [2], False),
    ("table", {"a": 1}, True), ("table", {"a": "x"}, False), ("table", [1], False), ("anything", object(), True),
]


@pytest.mark.parametrize("option,value,ok", TYPED_CASES, ids=lambda v: repr(v)[:12])
def test_options_are_checked_for_the_annotated_type(option, value, ok):
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(types.SimpleNamespace(register_initializers=stitchkit.hookimpl(lambda register: register(Typed))),
                        name="typed-plugin")
    if ok:
        assert reg.build("initializer", "typed", options={option: value}).options[option] is value
    else:
        with pytest.raises(ConfigError, match=rf"^x.initializer_args: initializer 'typed': option '{option}' must be ") as info:
            reg.check("initializer", "typed", {option: value}, where="x.initializer_args")
        assert repr(value) in str(info.value) and "\n" not in str(info.value)


def test_type_messages_say_what_is_expected():
    reg = Registry(load_entrypoints=False)
    reg.register_plugin(types.SimpleNamespace(register_initializers=stitchkit.hookimpl(lambda register: register(Typed))),
                        name="typed-plugin")
    expected = {"ridge": "a float", "steps": "an int", "cap": "an int or None", "mode": "one of 'fast', 'exact'",
                "pair": r"a list \[int, str\]", "label": "a str", "table": "a table or None"}
    for option, words in expected.items():
        with pytest.raises(ConfigError, match=rf"option '{option}' must be {words}, got \[\] \(list\)$"):
            reg.check("initializer", "typed", {option: []})
    with pytest.raises(ConfigError, match=r"option 'sizes' must be a list of int, got \['1'\] \(list\)$"):
        reg.check("initializer", "typed", {"sizes": ["1"]})


def test_create_and_build_agree():
    """``create(kind, name, *context, **options)`` is ``build(kind, name, *context, options=options)``: the same
    factory (a loss's for_models), the same option checks."""
    reg = Registry(load_entrypoints=True)
    teacher, student = stitchkit.RowShape(4, 32, 4), stitchkit.RowShape(2, 16, 2)
    made = reg.create("loss", "learngene", teacher, student, terms=["block"], levels=1)
    built = reg.build("loss", "learngene", teacher, student, options={"terms": ["block"], "levels": 1})
    assert type(made) is type(built) and made.pairs == built.pairs == [(3, 1)] and list(made.losses) == ["block"]
    with pytest.raises(ConfigError, match="option 'ridge' must be a float"):
        reg.create("initializer", "tm-ls", ridge="0.1")
    with pytest.raises(ConfigError, match="initializer 'random' has no option 'seed'"):
        stitchkit.create_initializer("random", seed=1)  # the module-level shortcut is Registry.create
    paths = [stitchkit.Path((stitchkit.Segment(0, 0, 1),))] * 4
    assert [len(g) for g in reg.create("sampler", "flops-grouped", paths, [1, 2, 3, 4], groups=2).groups] == [2, 2]


def test_one_table_describes_every_kind():
    """The registry's hooks, the options' context, the factory and the conformance check all come from
    core.kinds.KINDS: each row names a hook that exists, a base in core.interfaces and a checker in stitchkit.testing."""
    from stitchkit import testing
    from stitchkit.core import hookspecs, interfaces
    from stitchkit.core.kinds import KINDS
    from stitchkit.core.options import component_options

    assert list(KINDS) == ["ancestry", "design", "loss", "initializer", "sampler", "method"]
    for kind in KINDS.values():
        assert callable(getattr(hookspecs, kind.hook)) and getattr(interfaces, kind.base.__name__) is kind.base
        assert callable(getattr(testing, kind.checker))
        assert getattr(stitchkit, f"list_{kind.plural}").__name__ == f"list_{kind.plural}"
    assert KINDS["loss"].make(interfaces.DistillationLoss) == interfaces.DistillationLoss.for_models
    assert KINDS["sampler"].make(interfaces.PathSampler) is interfaces.PathSampler
    assert not {o.name for o in component_options("sampler", interfaces.PathSampler)} & set(KINDS["sampler"].context)


# --------------------------------------------------------------------------- signatures at load time
class WrongInitialize(StitchInitializer):
    """Forgets the context argument."""

    name = "wrong-initialize"

    def initialize(self, pool):  # type: ignore[override]
        pass


class ExtraDefaulted(StitchInitializer):
    """Adds a parameter with a default: still callable as the contract calls it."""

    name = "extra-defaulted"

    def initialize(self, pool, context, verbose=False):
        pass


def test_overrides_are_checked_against_the_contract_when_registering():
    reg = Registry(load_entrypoints=False)
    with pytest.raises(PluginError) as info:
        reg.register_plugin(make_plugin(WrongInitialize), name="bad-sig")
    msg = str(info.value)
    assert msg.startswith("plugin 'bad-sig': initializer 'wrong-initialize': WrongInitialize.initialize(self, pool) "
                          "cannot be called as StitchInitializer.initialize(self, pool, context)")
    assert "\n" not in msg
    assert "wrong-initialize" not in reg.list("initializer")
    reg.register_plugin(make_plugin(ExtraDefaulted), name="fine")
    assert "extra-defaulted" in reg.list("initializer")


BAD_SIGNATURE = """
    import stitchkit
    from stitchkit.core.interfaces import PathSampler

    class Wrong(PathSampler):
        "Takes no generator."
        name = "wrong-sampler"
        def sample(self):
            return [self.paths[0]]

    @stitchkit.hookimpl
    def register_samplers(register):
        register(Wrong)
"""


def test_broken_plugins_are_named_by_unknown_errors_and_fail_the_plugins_command(fake_site, capsys):
    from stitchkit.cli.main import main
    from stitchkit.core.registry import reset_default_registry

    _install_fake_distribution(fake_site, "sk-fake-sig", {"badsig": "sk_badsig_plugin"}, {"sk_badsig_plugin": BAD_SIGNATURE})
    reg = Registry()
    (broken,) = [b for b in reg.broken if b.plugin == "badsig"]
    assert "Wrong.sample(self) cannot be called as PathSampler.sample(self, generator)" in broken.error
    with pytest.raises(UnknownComponentError) as info:
        reg.get("sampler", "wrong-sampler")
    assert "skipped broken plugin(s) that may provide it: badsig (PluginError: plugin 'badsig'" in str(info.value)
    reset_default_registry()
    try:
        assert main(["plugins", "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert [b["plugin"] for b in out["broken"]] == ["badsig"] and out["broken"][0]["package"] == "sk-fake-sig"
        kinds = {c["kind"] for c in out["components"]}
        assert kinds == {"ancestry", "design", "loss", "initializer", "sampler", "method"}  # still lists everything
        assert main(["plugins"]) == 1
        assert "broken plugin: badsig (package sk-fake-sig)" in capsys.readouterr().out
    finally:
        reset_default_registry()


def test_plugins_command_exits_1_on_a_conflict(monkeypatch, capsys):
    from stitchkit.core import registry as registry_module
    from stitchkit.cli.main import main

    reg = Registry(load_entrypoints=False)
    reg.register_plugin(make_plugin(Zeros), name="first-plugin")

    class Zeros2(Zeros):
        """Another zeros."""

    reg.register_plugin(make_plugin(Zeros2), name="second-plugin")
    monkeypatch.setattr(registry_module, "default_registry", lambda: reg)
    assert main(["plugins"]) == 1
    assert "conflict: initializer 'zeros' registered by first-plugin, second-plugin" in capsys.readouterr().out
    reg.unregister_plugin("second-plugin")
    assert main(["plugins"]) == 0


def test_top_level_list_and_create_shortcuts():
    from stitchkit.core.registry import default_registry

    assert stitchkit.list_samplers() == default_registry().list("sampler")
    assert stitchkit.list_samplers("s*") == ["sandwich"]
    assert stitchkit.list_ancestries() == default_registry().list("ancestry")
    assert type(stitchkit.create_initializer("random")).__name__ == "RandomInitializer"
    assert {f"list_{k}" for k in ("designs", "losses", "initializers", "samplers", "methods", "ancestries")} <= set(stitchkit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'list_widgets'"):
        stitchkit.list_widgets  # noqa: B018


BAD_INITIALIZE = """
    import stitchkit
    from stitchkit.core.interfaces import StitchInitializer

    class Orthogonal(StitchInitializer):
        "Forgets the context parameter."
        name = "orthogonal"
        def initialize(self, pool):
            pass

    @stitchkit.hookimpl
    def register_initializers(register):
        register(Orthogonal)
"""


def test_a_build_naming_a_broken_plugins_component_stops_before_training(fake_site, tmp_path, capsys, tiny_config):
    from stitchkit.cli.main import main
    from stitchkit.core.registry import reset_default_registry

    _install_fake_distribution(fake_site, "sk-fake-badinit", {"badinit": "sk_badinit_plugin"},
                               {"sk_badinit_plugin": BAD_INITIALIZE})
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config("snnet", ["1x16:2", "1x32:4"], train="max_steps = 2",
                                  section='initializer = "orthogonal"'))
    reset_default_registry()
    try:
        assert main(["build", str(config), "--out", str(tmp_path / "run")]) == 2
    finally:
        reset_default_registry()
    err = capsys.readouterr().err
    assert err.startswith("stitchkit: error: unknown initializer 'orthogonal'") and err.count("\n") == 1
    assert ("skipped broken plugin(s) that may provide it: badinit (PluginError: plugin 'badinit': initializer "
            "'orthogonal': Orthogonal.initialize(self, pool) cannot be called as "
            "StitchInitializer.initialize(self, pool, context)") in err
    assert not (tmp_path / "run" / "anchors").exists()  # no anchor was trained
