"""The core's own plugin: the timm ViT, Swin, ResNet, ConvNeXt and LeViT adapters, the sequential path set, the
random initializer and the generic path samplers. Registered like any other
plugin, under the name ``stitchkit``.
"""

from __future__ import annotations

from ..core.hookspecs import hookimpl


@hookimpl
def register_ancestries(register):  # noqa: ANN001
    # local: every registry loads this module, and `stitchkit plugins` / `info` must not import timm
    from ..families.convnext import TimmConvNeXt
    from ..families.levit import TimmLeViT
    from ..families.resnet import TimmResNet
    from ..families.swin import TimmSwin
    from ..families.vit import TimmViT

    register(TimmViT)
    register(TimmSwin)
    register(TimmResNet)
    register(TimmConvNeXt)
    register(TimmLeViT)


@hookimpl
def register_methods(register):  # noqa: ANN001
    from .sequential import SequentialMethod

    register(SequentialMethod)


@hookimpl
def register_initializers(register):  # noqa: ANN001
    from .initializers import RandomInitializer

    register(RandomInitializer)


@hookimpl
def register_samplers(register):  # noqa: ANN001
    from .samplers import FlopsGroupedSampler, ROSSampler, SandwichSampler, UniformSampler

    register(UniformSampler)
    register(FlopsGroupedSampler)
    register(SandwichSampler)
    register(ROSSampler)
