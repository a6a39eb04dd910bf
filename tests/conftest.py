"""Suite-wide settings and shared fixtures.

One torch thread: the models here are tiny, and on a 2-core machine shared
with other processes, intra-op threads spin against each other and make
every test many times slower without changing any result.

``registry``: the registry with the shipped plugins, found through their entry
points like any third-party one (a shipped plugin that is missing fails, never
skips); ``core_registry``: the core's own components only. Both are shared by
the whole session: a test that registers a plugin makes its own ``Registry``.
``tiny_config``: the text of a build config on scikit-learn's digits (8x8 grey
images, no download) whose tiny ViT anchors train here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from stitchkit.core.registry import Registry

torch.set_num_threads(1)

#: The methods the shipped plugins provide (learngene-pool, snnet, snnetv2).
SHIPPED_METHODS = {"learngene-pool", "learngene-pool-sliding-window", "snnet", "snnetv2"}


@pytest.fixture(scope="session")
def registry() -> Registry:
    reg = Registry(load_entrypoints=True)
    missing = SHIPPED_METHODS - set(reg.list("method"))
    assert not missing, f"the shipped plugins providing {sorted(missing)} are not installed ({reg.broken})"
    return reg


@pytest.fixture(scope="session")
def core_registry() -> Registry:
    return Registry(load_entrypoints=False)


def tiny_anchor_config(method: str, anchors: Sequence[str], *, train: str = "", section: str = "") -> str:
    """``method``'s config: digits data, ``[train]`` with ``train``'s extra lines, the method's section with
    ``section``'s lines (sub-tables included), and one anchor trained here (patch 4) per shape of ``anchors``."""
    return "\n".join([
        f'method = "{method}"',
        "[data]", 'source = "digits"', "img_size = 8", "in_chans = 1",
        "[train]", "batch_size = 32", "progress = false", 'device = "cpu"', train.strip(),
        f"[{method}]", section.strip(),
        *(f'[[{method}.anchors]]\nshape = "{shape}"\npatch_size = 4\ntrain = true' for shape in anchors),
    ]) + "\n"


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., str]:
    return tiny_anchor_config
