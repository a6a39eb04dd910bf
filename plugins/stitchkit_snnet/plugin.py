"""Entry point of the SN-Net plugin (``snnet = "stitchkit_snnet.plugin"``).

Registers the ``snnet`` method and the ``ls`` (least-squares) stitch
initializer, which works on any pool.
"""

from __future__ import annotations

from stitchkit.core.hookspecs import hookimpl


@hookimpl
def register_methods(register):  # noqa: ANN001
    from .method import SNNetMethod

    register(SNNetMethod)


@hookimpl
def register_initializers(register):  # noqa: ANN001
    from .ls import LeastSquaresInitializer

    register(LeastSquaresInitializer)
