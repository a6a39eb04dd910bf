"""Entry point of the SN-Netv2 plugin (``snnetv2 = "stitchkit_snnetv2.plugin"``).

Registers the ``snnetv2`` method. Its default initializer (``ls``) comes from
the SN-Net plugin and its default sampler (``ros``) from the core.
"""

from __future__ import annotations

from stitchkit.core.hookspecs import hookimpl


@hookimpl
def register_methods(register):  # noqa: ANN001
    from .method import SNNetv2Method

    register(SNNetv2Method)
