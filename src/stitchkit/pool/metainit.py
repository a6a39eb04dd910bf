"""Build modules on the meta device without running their weight initialisers.

Why: a pool file is loaded by building its modules' structure on the meta
device and then assigning the stored tensors, so initial values are never
used. Yet every ``nn.Linear`` and ``nn.LayerNorm`` still runs its initialiser,
and on the meta device each call goes through Python decompositions: about
half the time of building a ViT skeleton. Inside :func:`meta_skeleton`,
``torch.nn.init`` functions return meta tensors untouched. The skip is a torch
function mode, which is thread-local: other threads keep initialising normally,
and a tensor on a real device is always initialised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._device import DeviceContext  # the mode behind ``with torch.device(...)``

_INITIALISERS: frozenset[Callable[..., Any]] = frozenset(
    getattr(torch.nn.init, name)
    for name in (
        "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
        "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
    )
    if hasattr(torch.nn.init, name)
)


class _MetaSkeleton(DeviceContext):
    """torch's own ``with torch.device("meta")`` mode, which also skips initialisers of meta tensors."""

    def __init__(self) -> None:
        super().__init__(torch.device("meta"))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _INITIALISERS:
            tensor = args[0] if args else (kwargs or {}).get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
                return tensor
        return super().__torch_function__(func, types, args, kwargs)


@contextlib.contextmanager
def meta_skeleton() -> Iterator[None]:
    """Like ``with torch.device("meta")``, minus the initialisers' cost (see the module docstring)."""
    with _MetaSkeleton():
        yield
