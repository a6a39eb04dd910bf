"""The plugin contract: one ``register_*`` hook per kind of component.

A plugin is a module (or object) with functions decorated by
``stitchkit.hookimpl`` and named exactly like the specs below; it is found
through the ``stitchkit`` entry-point group. Each hook receives a ``register``
callback; call it once per component class. The host owns the tables, checks
names and reports duplicates. All hooks are called for every plugin (no
``firstresult``); the ``register_*`` hooks return nothing, and
:func:`ancestry_for_model` returns an answer the host collects from every plugin. A function decorated with
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


@hookspec
def ancestry_for_model(name: str) -> str | None:
    """The name of the ancestry adapter (registered by this plugin) that builds the model ``name``
    (e.g. a timm model name such as ``swin_tiny_patch4_window7_224``), or ``None`` when none of the
    plugin's adapters does. Answer from the name alone: build nothing, download nothing. The host asks
    every plugin (:meth:`stitchkit.core.registry.Registry.ancestry_for`); a name two plugins claim for
    different adapters is refused, naming both, so the user names the adapter."""
