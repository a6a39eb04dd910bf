"""A component's options: the keyword arguments a config's ``<kind>_args`` table passes it.

A component is named in a config (``initializer = "tm-ls"``) and configured by
a table beside it (``[learngene.initializer_args] ridge = 0.05``, or
``--set learngene.initializer_args.ridge=0.05``). The table's keys are
passed as keyword arguments to the component's *factory*: its constructor,
except for distillation losses, which are made by the classmethod
``for_models(teacher, student, **options)`` because they need the two
networks' shapes. The host supplies each kind's *context* arguments
(:attr:`Kind.context <stitchkit.core.kinds.Kind.context>`); every other parameter of the factory is an option, and its
name, annotation and default are read from the signature. A factory that
only takes ``**options`` (the base ``for_models``) defers to the constructor.

Values are checked against the annotations before anything is built (the
pre-flight check of a build): ``ridge = "0.1"`` for a ``ridge: float`` is a
:class:`~stitchkit.core.errors.ConfigError` naming the key and the expected
type, not a ``TypeError`` after hours of training. An int is a float, a list
is a tuple or sequence (TOML has no tuples); a bool is not a number.
"""

from __future__ import annotations

import collections.abc
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .kinds import KINDS


@dataclass(frozen=True)
class Option:
    """One option of a component: ``required`` when its factory gives no default; ``annotation`` is the
    evaluated annotation the value is checked against (``Any`` when there is none or it cannot be resolved)."""

    name: str
    type: str
    default: Any = None
    required: bool = False
    annotation: Any = Any

    def as_dict(self) -> dict[str, Any]:
        default = self.default if _jsonable(self.default) else repr(self.default)
        return {"name": self.name, "type": self.type, "default": default, "required": self.required}


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def factory(kind: str, cls: type) -> Callable[..., Any]:
    """What the host calls to make a component of ``kind`` (its :class:`~stitchkit.core.kinds.Kind`'s factory)."""
    return KINDS[kind].make(cls)


def _signature(kind: str, cls: type) -> tuple[list[inspect.Parameter], Callable[..., Any]]:
    """Factory parameters after the context ones, following ``**options`` to the constructor; and the
    function they belong to (whose module resolves their annotations)."""
    spec = KINDS[kind]
    fn = spec.make(cls)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return [], fn
    context = spec.context
    if spec.factory is not None:
        # a classmethod factory, e.g. for_models(teacher, student, ...): its first parameters are the context,
        # whatever their names
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        params = [p for p in params if p not in positional[: len(context)]]
        if any(p.kind is p.VAR_KEYWORD for p in params) and all(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            ctor = list(inspect.signature(cls).parameters.values())
            return [p for p in ctor if p.name not in context], getattr(cls, "__init__", cls)
        return params, fn
    return [p for p in params if p.name not in context], getattr(cls, "__init__", cls)


def _annotation(p: inspect.Parameter, fn: Callable[..., Any]) -> Any:
    """The parameter's annotation as a type (string annotations evaluated in the function's module);
    ``Any`` when absent or not resolvable (a name imported only for type checkers)."""
    ann = p.annotation
    if ann is p.empty:
        return Any
    if isinstance(ann, str):
        target = inspect.unwrap(getattr(fn, "__func__", fn))
        module = sys.modules.get(getattr(target, "__module__", ""), None)
        namespace = {**vars(typing), **vars(collections.abc), **(vars(module) if module else {})}
        try:
            return eval(ann, namespace)  # noqa: S307 - the plugin's own annotation source, as typing.get_type_hints does
        except Exception:  # noqa: BLE001 - an annotation we cannot resolve is not checked
            return Any
    return ann


def component_options(kind: str, cls: type) -> list[Option]:
    """The options of the component class ``cls`` of ``kind``, in signature order."""
    out = []
    params, fn = _signature(kind, cls)
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation
        type_name = "any" if ann is p.empty else (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
        required = p.default is p.empty
        out.append(Option(p.name, str(type_name), None if required else p.default, required, _annotation(p, fn)))
    return out


def accepts_any_option(kind: str, cls: type) -> bool:
    """True when the factory takes ``**kwargs`` itself (any key is passed through)."""
    return any(p.kind is p.VAR_KEYWORD for p in _signature(kind, cls)[0])


def check_options(kind: str, name: str, cls: type, options: Mapping[str, Any], where: str = "") -> None:
    """Refuse options the component does not take, and missing required ones, naming the accepted ones."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where or kind + '_args'}: expected a table of options for {kind} {name!r}, got {options!r}")
    known = component_options(kind, cls)
    names = [o.name for o in known]
    accepted = ", ".join(f"{o.name} ({o.type}{'' if o.required else f', default {o.default!r}'})" for o in known) or "none"
    prefix = f"{where}: " if where else ""
    if not accepts_any_option(kind, cls):
        for key in options:
            if key not in names:
                raise ConfigError(f"{prefix}{kind} {name!r} has no option {key!r} (accepted options: {accepted})")
    missing = [o.name for o in known if o.required and o.name not in options]
    if missing:
        raise ConfigError(f"{prefix}{kind} {name!r} needs option(s) {', '.join(missing)} (accepted options: {accepted})")
    for o in known:
        if o.name in options and not matches(options[o.name], o.annotation):
            value = options[o.name]
            raise ConfigError(
                f"{prefix}{kind} {name!r}: option {o.name!r} must be {describe(o.annotation)}, got {value!r} "
                f"({type(value).__name__})"
                + (" (no quotes around a number in TOML)" if isinstance(value, str) and _numeric_text(value) else "")
            )


def _numeric_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection,
              collections.abc.MutableSequence, set, frozenset, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is getattr(types, "UnionType", None)


def matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a factory annotation (config values are TOML's: bool, int, float, str,
    lists and tables; an int fits a float, a list a tuple or sequence, a bool no number)."""
    if annotation is Any or annotation is inspect.Parameter.empty or isinstance(annotation, typing.TypeVar):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _is_union(origin):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if container in _SEQUENCES:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
            return False
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if container in _MAPPINGS:
        if not isinstance(value, Mapping):
            return False
        return len(args) != 2 or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if isinstance(container, type):
        return isinstance(value, container)
    return True  # an annotation form this reader does not know (a Protocol alias, a string it could not resolve)


def describe(annotation: Any) -> str:
    """An annotation in words, for the error message: ``a float``, ``an int or None``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if _is_union(origin):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if annotation is None or annotation is type(None):
        return "None"
    container = origin or annotation
    if container in _SEQUENCES:
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return "a list [" + ", ".join(_bare(describe(a)) for a in args) + "]"
        return f"a list of {_bare(describe(args[0]))}" if args else "a list"
    if container in _MAPPINGS:
        return "a table"
    name = getattr(annotation, "__name__", str(annotation))
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _bare(words: str) -> str:
    return words.removeprefix("an ").removeprefix("a ")
