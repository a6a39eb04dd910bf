"""Plugin manager and component registry.

A :class:`Registry` owns one pluggy manager and one table per kind of
component. It registers the core's own components, then every plugin of the
``stitchkit`` entry-point group (unless autoloading is off), then asks each
plugin's ``register_*`` hooks for its components. A plugin that fails to
import or raises while registering is recorded as *broken* and skipped; the
others still load. Nothing happens at import time: create a registry when you
need one, or use :func:`default_registry` for the process-wide one.
"""

from __future__ import annotations

import builtins
import fnmatch
import functools
import importlib
import importlib.metadata
import inspect
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .contract import signature_problem
from .errors import ConfigError, DuplicateComponentError, PluginError, UnknownComponentError
from .interfaces import AncestryAdapter, Method
from .kinds import KINDS as KINDS  # re-exported: the table of kinds
from .kinds import Kind as Kind
from .options import Option, check_options, component_options

ENTRY_POINT_GROUP = "stitchkit"
#: Set to a non-empty value other than ``0`` to skip entry-point plugins (tests do).
AUTOLOAD_ENV = "STITCHKIT_DISABLE_PLUGIN_AUTOLOAD"
CORE_PLUGIN = "stitchkit"
#: The module registering the core's components (adapters, samplers, the random initializer, ``sequential``).
CORE_PLUGIN_MODULE = "stitchkit.components.builtin"

#: Hooks that answer a question instead of registering components.
QUERY_HOOKS = ("ancestry_for_model",)


@dataclass(frozen=True)
class Entry:
    """One registered component and the plugin that provides it."""

    kind: str
    name: str
    cls: type
    plugin: str

    @property
    def summary(self) -> str:
        """The first paragraph of the class docstring, on one line."""
        doc = inspect.cleandoc(self.cls.__doc__ or "")
        return " ".join(doc.split("\n\n")[0].split()) if doc else ""

    @property
    def options(self) -> builtins.list[Option]:
        """What a config's ``<kind>_args`` table may set (see :mod:`stitchkit.core.options`)."""
        return component_options(self.kind, self.cls)


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be loaded or failed while registering."""

    plugin: str
    package: str
    error: str


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "") not in ("", "0")


class Registry:
    """Tables of components by kind, filled from plugins."""

    def __init__(self, load_entrypoints: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._tables: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self.broken: list[BrokenPlugin] = []
        #: plugin name -> (distribution name, version), for plugins loaded from entry points and the core
        self.packages: dict[str, tuple[str, str]] = {CORE_PLUGIN: ("stitchkit", _version("stitchkit"))}
        # The core's own components register like any plugin: loaded by module name, as an entry point
        # is, so the core package never imports the layers above it.
        self.register_plugin(importlib.import_module(CORE_PLUGIN_MODULE), name=CORE_PLUGIN)
        if load_entrypoints is None:
            load_entrypoints = not autoload_disabled()
        if load_entrypoints:
            self._load_entrypoints()

    # -- loading --------------------------------------------------------------
    def _load_entrypoints(self) -> None:
        eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            package = dist.name if dist is not None else ep.value
            if self.pm.has_plugin(ep.name):
                continue
            self.packages[ep.name] = (package, dist.version if dist is not None else "")
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                self.broken.append(BrokenPlugin(ep.name, package, _describe(exc)))
                continue
            try:
                self.register_plugin(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001
                self.broken.append(BrokenPlugin(ep.name, package, _describe(exc)))

    def register_plugin(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (usually a module) and collect its components.

        Raises :class:`PluginError` for a hook implementation whose name is no
        hook of stitchkit (a misspelling), or a bad registration; in that case
        nothing of the plugin is kept.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        known = {k.hook for k in KINDS.values()} | set(QUERY_HOOKS)
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is not None and attr not in known:
                raise PluginError(
                    f"plugin {name!r} implements unknown hook {attr!r}; stitchkit hooks are "
                    f"{', '.join(sorted(known))}"
                )
        self.pm.register(plugin, name=name)
        try:
            staged: list[Entry] = []
            for kind, spec in KINDS.items():
                caller = getattr(self.pm.hook, spec.hook)
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._stager(kind, name, staged))
            self.pm.check_pending()
        except Exception:
            self.pm.unregister(plugin)
            raise
        for entry in staged:
            self._add(entry)
        return name

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and every component it registered."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            raise PluginError(f"no plugin named {name!r} is registered")
        self.pm.unregister(plugin)
        for table in self._tables.values():
            for comp in [k for k, e in table.items() if e.plugin == name]:
                del table[comp]
        for key, owners in list(self._conflicts.items()):
            if name in owners:
                owners.remove(name)
                if len(owners) <= 1:
                    del self._conflicts[key]

    def _stager(self, kind: str, plugin: str, staged: list[Entry]) -> Callable[[type], None]:
        base = KINDS[kind].base

        def register(cls: type) -> None:
            if not isinstance(cls, type) or not issubclass(cls, base):
                raise PluginError(
                    f"plugin {plugin!r} registered {cls!r} as a {kind}, but it is not a subclass of "
                    f"stitchkit.core.interfaces.{base.__name__}"
                )
            comp_name = getattr(cls, "name", None)
            if not isinstance(comp_name, str) or not comp_name:
                raise PluginError(f"plugin {plugin!r}: {kind} class {cls.__name__} has no 'name' attribute")
            problem = signature_problem(cls, base)
            if problem:
                raise PluginError(f"plugin {plugin!r}: {kind} {comp_name!r}: {problem}")
            staged.append(Entry(kind, comp_name, cls, plugin))

        return register

    def _add(self, entry: Entry) -> None:
        table = self._tables[entry.kind]
        key = (entry.kind, entry.name)
        if entry.name in table or key in self._conflicts:
            owners = self._conflicts.setdefault(key, [table[entry.name].plugin] if entry.name in table else [])
            owners.append(entry.plugin)
            return
        table[entry.name] = entry

    # -- queries --------------------------------------------------------------
    def list(self, kind: str, pattern: str = "*") -> builtins.list[str]:
        """Names of registered components of ``kind`` matching a shell-style ``pattern``."""
        self._check_kind(kind)
        return sorted(n for n in self._tables[kind] if fnmatch.fnmatchcase(n, pattern))

    def entries(self, kind: str | None = None) -> builtins.list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for e in sorted(self._tables[k].values(), key=lambda e: e.name)]

    def conflicts(self) -> dict[tuple[str, str], builtins.list[str]]:
        return {k: list(v) for k, v in self._conflicts.items()}

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name``; documented errors for unknown or duplicate names."""
        self._check_kind(kind)
        owners = self._conflicts.get((kind, name))
        if owners:
            raise DuplicateComponentError(kind, name, owners[0], owners[1])
        try:
            return self._tables[kind][name].cls
        except KeyError:
            raise UnknownComponentError(
                kind, name, self._tables[kind], broken=[f"{b.plugin} ({b.error})" for b in self.broken]
            ) from None

    def entry(self, kind: str, name: str) -> Entry:
        """The registration of ``name``: class, providing plugin, summary and options."""
        self.get(kind, name)
        return self._tables[kind][name]

    def provider(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._tables[kind][name].plugin

    def create(self, kind: str, name: str, *context: Any, **options: Any) -> Any:
        """Make the component ``name``: the kind's context arguments, then its options as keywords.

        The same as :meth:`build` with ``options=options``: both check the options (names and types)
        and call the kind's factory (:class:`~stitchkit.core.kinds.Kind`; ``for_models`` for losses).
        """
        return self.build(kind, name, *context, options=options)

    def check(self, kind: str, name: str, options: Mapping[str, Any] | None = None, where: str = "") -> type:
        """The class of ``name``, after checking that it takes ``options``, each of the type its factory
        annotates (a :class:`ConfigError` naming the key, what it must be and the accepted options if
        not). Call it for every component of a run before any data is read or anything trains."""
        cls = self.get(kind, name)
        check_options(kind, name, cls, options or {}, where)
        return cls

    def build(self, kind: str, name: str, *context: Any, options: Mapping[str, Any] | None = None, where: str = "") -> Any:
        """Make the component ``name`` from a config: the kind's context arguments (sampler: paths and
        MACs; loss: teacher and student shapes) and the ``<kind>_args`` table as keyword arguments."""
        cls = self.check(kind, name, options, where)
        return KINDS[kind].make(cls)(*context, **dict(options or {}))

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise UnknownComponentError("kind", kind, KINDS)

    # -- typed shortcuts ------------------------------------------------------
    def method(self, name: str) -> Method:
        return self.create("method", name)  # type: ignore[no-any-return]

    def ancestry(self, name: str) -> type[AncestryAdapter]:
        return self.get("ancestry", name)  # type: ignore[return-value]

    def ancestry_for(self, model_name: str) -> str:
        """The ancestry adapter that builds the model ``model_name``, as the plugins answer the
        ``ancestry_for_model`` hook. None answering, or two plugins naming different adapters, is a
        :class:`ConfigError` saying so (name the adapter then: ``--adapter``, ``[model] adapter``)."""
        answers: dict[str, list[str]] = {}
        for impl in self.pm.hook.ancestry_for_model.get_hookimpls():
            plugin = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                answer = impl.function(name=model_name)
            except Exception as exc:  # noqa: BLE001 - a plugin's bug, named as such
                raise PluginError(f"plugin {plugin!r} failed to answer ancestry_for_model({model_name!r}): {_describe(exc)}") from exc
            if answer is None:
                continue
            if not isinstance(answer, str) or answer not in self._tables["ancestry"]:
                raise PluginError(
                    f"plugin {plugin!r} answered ancestry_for_model({model_name!r}) with {answer!r}, "
                    f"which is no registered ancestry adapter ({', '.join(self.list('ancestry'))})"
                )
            answers.setdefault(answer, []).append(plugin)
        if len(answers) == 1:
            return next(iter(answers))
        if not answers:
            raise ConfigError(
                f"no ancestry adapter recognises the model {model_name!r} (adapters: {', '.join(self.list('ancestry'))}); "
                "check the name (timm.list_models() lists timm's), or name the adapter (--adapter, [model] adapter)"
            )
        claims = "; ".join(f"{a} (plugin {', '.join(p)})" for a, p in sorted(answers.items()))
        raise ConfigError(f"several ancestry adapters claim the model {model_name!r}: {claims}; name the adapter (--adapter, [model] adapter)")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return ""


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry, created on first use."""
    return Registry()


def reset_default_registry() -> None:
    """Forget the process-wide registry (after installing a plugin, or in tests)."""
    default_registry.cache_clear()


# Module-level shortcuts in the style of timm's list_models / create_model.
def _lister(kind: str) -> Callable[..., list[str]]:
    def lister(pattern: str = "*") -> list[str]:
        return default_registry().list(kind, pattern)

    lister.__doc__ = f"Names of registered {kind} components matching a wildcard pattern."
    lister.__name__ = lister.__qualname__ = f"list_{KINDS[kind].plural}"
    return lister


def _creator(kind: str) -> Callable[..., Any]:
    def creator(name: str, *context: Any, **options: Any) -> Any:
        return default_registry().create(kind, name, *context, **options)

    creator.__doc__ = f"Make the {kind} registered as ``name`` from its context arguments and options (Registry.create)."
    creator.__name__ = creator.__qualname__ = f"create_{kind}"
    return creator


list_ancestries, create_ancestry = _lister("ancestry"), _creator("ancestry")
list_designs, create_design = _lister("design"), _creator("design")
list_losses, create_loss = _lister("loss"), _creator("loss")
list_initializers, create_initializer = _lister("initializer"), _creator("initializer")
list_samplers, create_sampler = _lister("sampler"), _creator("sampler")
list_methods, create_method = _lister("method"), _creator("method")
