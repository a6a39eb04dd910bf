"""The six kinds of component, one table row each.

Everything the host needs to know about a kind lives in its :class:`Kind`:
the hook a plugin implements, the base class a component subclasses, the
arguments the host supplies when it makes one (the *context*: a sampler's
paths and MACs, a loss's teacher and student shapes), the factory it calls
(the constructor, or a classmethod), and the conformance check
(:mod:`stitchkit.testing`) that a registered component passes. The registry,
the options reader and the conformance suite all read this one table, so a
kind cannot be described differently in two places.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .interfaces import AncestryAdapter, AuxiliaryDesign, DistillationLoss, Method, PathSampler, StitchInitializer


@dataclass(frozen=True)
class Kind:
    """One kind of component: how a plugin registers it and how the host makes and checks it."""

    name: str
    #: The hook (:mod:`stitchkit.core.hookspecs`) whose ``register`` callback takes classes of this kind.
    hook: str
    #: The base class (:mod:`stitchkit.core.interfaces`) every component of the kind subclasses.
    base: type
    #: Arguments the host passes the factory first (positionally); every other factory parameter is an option.
    context: tuple[str, ...]
    #: The classmethod that makes a component from a config; ``None``: the constructor.
    factory: str | None
    #: The function of :mod:`stitchkit.testing` that checks a component of the kind (named, not imported:
    #: the conformance suite sits above the core).
    checker: str
    #: The plural in ``stitchkit.list_<plural>()``.
    plural: str

    def make(self, cls: type) -> Callable[..., Any]:
        """The callable that makes a component ``cls`` of this kind: ``factory(*context, **options)``."""
        return cls if self.factory is None else getattr(cls, self.factory)  # type: ignore[no-any-return]


#: kind name -> :class:`Kind`, in the order ``stitchkit plugins`` lists them.
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("ancestry", "register_ancestries", AncestryAdapter, ("model",), None, "_check_ancestry", "ancestries"),
        Kind("design", "register_designs", AuxiliaryDesign, (), None, "_check_design", "designs"),
        Kind("loss", "register_losses", DistillationLoss, ("teacher", "student"), "for_models", "_check_loss", "losses"),
        Kind("initializer", "register_initializers", StitchInitializer, (), None, "_check_initializer", "initializers"),
        Kind("sampler", "register_samplers", PathSampler, ("paths", "macs"), None, "_check_sampler", "samplers"),
        Kind("method", "register_methods", Method, (), None, "_check_method", "methods"),
    )
}
