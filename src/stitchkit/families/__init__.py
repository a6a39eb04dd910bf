"""The core's ancestry adapters (timm ViT, Swin, ResNet, ConvNeXt), their shared timm base and
starting weights. It imports :mod:`stitchkit.core` and :mod:`stitchkit.pool`; only this package
and the builtin registration (:mod:`stitchkit.components.builtin`) import a family module, so
every other layer reaches a family through the registry, as a third-party family is reached.
"""
