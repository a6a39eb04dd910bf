"""The core's ancestry adapters (timm ViT, Swin, ResNet, ConvNeXt), their shared timm base and
starting weights. It imports :mod:`stitchkit.core`, :mod:`stitchkit.pool` and :mod:`stitchkit.io`
(checkpoint files are read with its checks). Only this package and the builtin registration
(:mod:`stitchkit.components.builtin`) import a family module: every other layer reaches a family
through the registry, as it reaches a third-party one.
"""
