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


#: timm's model modules whose networks the core's adapters take (a name is claimed by the module that
#: registers it in timm: ``deit_*`` and ``vit_*`` build VisionTransformers, ``seresnet50`` a ResNet).
TIMM_MODULES = {
    "timm-vit": ("vision_transformer", "deit"),
    "timm-swin": ("swin_transformer",),
    "timm-resnet": ("resnet",),
    "timm-convnext": ("convnext",),
    "timm-levit": ("levit",),
}


@hookimpl
def ancestry_for_model(name):  # noqa: ANN001, ANN201
    """The core adapter for a timm model name (``arch`` or ``arch.tag``; ``hf-hub:timm/arch.tag``, timm's own
    Hub repositories, named by the model), from the timm module that registers it (nothing built)."""
    import timm.models

    name = name.removeprefix("hf-hub:timm/")
    if not timm.models.is_model(name):
        return None
    for adapter, modules in TIMM_MODULES.items():
        if timm.models.is_model_in_modules(name, modules):
            return adapter
    return None


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
