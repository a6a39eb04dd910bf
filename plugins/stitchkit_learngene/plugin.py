"""Entry point of the Learngene Pool plugin (``stitchkit`` group, name ``learngene-pool``)."""

from __future__ import annotations

from stitchkit.core.hookspecs import hookimpl


@hookimpl
def register_designs(register):  # noqa: ANN001
    from .designs import DepthReduced, PoolDesign, WidthReduced

    register(DepthReduced)
    register(WidthReduced)
    register(PoolDesign)


@hookimpl
def register_losses(register):  # noqa: ANN001
    from .losses import AttentionLoss, BlockLoss, LearngeneDistillation, PredictionLoss

    register(PredictionLoss)
    register(BlockLoss)
    register(AttentionLoss)
    register(LearngeneDistillation)


@hookimpl
def register_initializers(register):  # noqa: ANN001
    from .initializers import TMInitializer, TMPinvInitializer, TMRidgeInitializer

    register(TMInitializer)
    register(TMPinvInitializer)
    register(TMRidgeInitializer)


@hookimpl
def register_methods(register):  # noqa: ANN001
    from .method import LearngenePoolMethod, SlidingWindowLearngenePoolMethod

    register(LearngenePoolMethod)
    register(SlidingWindowLearngenePoolMethod)
