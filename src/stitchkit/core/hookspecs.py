"""The plugin contract: one ``register_*`` hook per kind of component.

A plugin is a module (or object) with functions decorated by
``stitchkit.hookimpl`` and named exactly like the specs below; it is found
through the ``stitchkit`` entry-point group. Each hook receives a ``register``
callback; call it once per component class. The host owns the tables, checks
names and reports duplicates. All hooks are called for every plugin (no
``firstresult``); their return value is ignored. A function decorated with
``hookimpl`` whose name matches no spec is an error, not silence, and so is a
registered class whose overridden methods cannot be called the way the
kind's base class is (:mod:`stitchkit.core.contract`): the plugin is then skipped
as broken. A component's options are its constructor's keyword parameters
(``for_models`` for losses; :mod:`stitchkit.core.options`), set from a config's
``<kind>_args`` table.

Example::

    import stitchkit
    from stitchkit.core.interfaces import StitchInitializer

    class Zeros(StitchInitializer):
        "Zero weights and biases (a deliberately bad baseline)."
        name = "zeros"
        def initialize(self, pool, context):
            for layer in pool.stitches.values():
                layer.weight.data.zero_(); layer.bias.data.zero_()

    @stitchkit.hookimpl
    def register_initializers(register):
        register(Zeros)
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("stitchkit")
hookimpl = pluggy.HookimplMarker("stitchkit")

Register = Callable[[type], None]


@hookspec
def register_ancestries(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.AncestryAdapter` subclasses (network families)."""


@hookspec
def register_designs(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.AuxiliaryDesign` subclasses."""


@hookspec
def register_losses(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.DistillationLoss` subclasses."""


@hookspec
def register_initializers(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.StitchInitializer` subclasses."""


@hookspec
def register_samplers(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.PathSampler` subclasses."""


@hookspec
def register_methods(register: Register) -> None:
    """Register :class:`~stitchkit.core.interfaces.Method` subclasses."""
