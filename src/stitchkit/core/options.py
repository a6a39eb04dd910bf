"""A component's options: the keyword arguments a config's ``<kind>_args`` table passes it.

A component is named in a config (``initializer = "tm-ls"``) and configured by
a table beside it (``[learngene.initializer_args] ridge = 0.05``, or
``--set learngene.initializer_args.ridge=0.05``). The table's keys are
passed as keyword arguments to the component's *factory*: its constructor,
except for distillation losses, which are made by the classmethod
``for_models(teacher, student, **options)`` because they need the two
networks' shapes. The host supplies each kind's *context* arguments
(:data:`CONTEXT`); every other parameter of the factory is an option, and its
name, annotation and default are read from the signature. A factory that
only takes ``**options`` (the base ``for_models``) defers to the constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: Arguments the host passes to each kind's factory: not options.
CONTEXT: dict[str, tuple[str, ...]] = {
    "ancestry": ("model",),
    "design": (),
    "loss": ("teacher", "student"),
    "initializer": (),
    "sampler": ("paths", "macs"),
    "method": (),
}


@dataclass(frozen=True)
class Option:
    """One option of a component: ``required`` when its factory gives no default."""

    name: str
    type: str
    default: Any = None
    required: bool = False

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
    """What the host calls to make a component of ``kind`` (``for_models`` for losses, else the class)."""
    if kind == "loss":
        return getattr(cls, "for_models")  # type: ignore[no-any-return]
    return cls


def _signature(kind: str, cls: type) -> list[inspect.Parameter]:
    """Factory parameters after the context ones, following ``**options`` to the constructor."""
    fn = factory(kind, cls)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []
    context = CONTEXT[kind]
    if kind == "loss":
        # for_models(teacher, student, ...): the first two parameters are the context, whatever their names
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        params = [p for p in params if p not in positional[: len(context)]]
        if any(p.kind is p.VAR_KEYWORD for p in params) and all(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            ctor = list(inspect.signature(cls).parameters.values())
            return [p for p in ctor if p.name not in context]
        return params
    return [p for p in params if p.name not in context]


def component_options(kind: str, cls: type) -> list[Option]:
    """The options of the component class ``cls`` of ``kind``, in signature order."""
    out = []
    for p in _signature(kind, cls):
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation
        type_name = "any" if ann is p.empty else (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
        required = p.default is p.empty
        out.append(Option(p.name, str(type_name), None if required else p.default, required))
    return out


def accepts_any_option(kind: str, cls: type) -> bool:
    """True when the factory takes ``**kwargs`` itself (any key is passed through)."""
    return any(p.kind is p.VAR_KEYWORD for p in _signature(kind, cls))


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
