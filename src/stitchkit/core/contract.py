"""Load-time check that a component's overridden methods can be called as its kind's contract calls them.

The host calls ``initializer.initialize(pool, context)``,
``sampler.sample(generator)`` and so on; an override that renames, drops or
adds a required parameter would fail only when it is first called, possibly
after hours of training. :func:`signature_problem` binds the base method's
parameters (positional ones by position, keyword-only ones by name) to the
override's signature when the plugin registers, so the registry can mark the
plugin broken at once. Extra parameters with defaults are fine; ``example``
(whose context differs per component by design) and the constructor (which
takes the component's options) are not checked.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Methods whose signature is the component's own business.
UNCHECKED = frozenset({"example", "__init__"})


def _function(obj: Any) -> Any:
    """The plain function behind a method, classmethod or staticmethod; ``None`` for anything else."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        return None
    return obj if inspect.isfunction(obj) else None


def _placeholders(sig: inspect.Signature) -> tuple[list[object], dict[str, object]]:
    args: list[object] = []
    kwargs: dict[str, object] = {}
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append(object())
        elif p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = object()
    return args, kwargs


def _names(sig: inspect.Signature) -> str:
    """``(self, pool, context)``: the parameters without annotations, which would drown the message."""
    return str(sig.replace(parameters=[p.replace(annotation=p.empty)
                                       for p in sig.parameters.values()], return_annotation=sig.empty))


def signature_problem(cls: type, base: type) -> str | None:
    """A one-line reason why a method of ``cls`` cannot be called like the same method of ``base``, or ``None``."""
    for name, attr in vars(base).items():
        if name in UNCHECKED or (name.startswith("_") and name != "__call__"):
            continue
        base_fn = _function(attr)
        if base_fn is None:
            continue
        impl = inspect.getattr_static(cls, name)
        impl_fn = _function(impl)
        if impl_fn is None or impl_fn is base_fn:
            continue
        base_sig, impl_sig = inspect.signature(base_fn), inspect.signature(impl_fn)
        args, kwargs = _placeholders(base_sig)
        try:
            impl_sig.bind(*args, **kwargs)
        except TypeError as exc:
            return (
                f"{cls.__qualname__}.{name}{_names(impl_sig)} cannot be called as "
                f"{base.__name__}.{name}{_names(base_sig)} ({exc})"
            )
    return None
