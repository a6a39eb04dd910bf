"""Entry point of the plugin (``procrustes = "stitchkit_procrustes.plugin"`` in the ``stitchkit`` group)."""

from __future__ import annotations

from stitchkit import hookimpl


@hookimpl
def register_initializers(register):  # noqa: ANN001
    from .initializer import ProcrustesInitializer

    register(ProcrustesInitializer)
