"""Parameters, MACs and latency, counted the way the papers count them.

MACs are multiply-accumulates of linear and convolution layers plus the
operations an adapter declares that such hooks cannot see (the two attention
matmuls q @ k^T and attn @ v: :meth:`~stitchkit.core.interfaces.AncestryAdapter.uncounted_macs`),
per image, at the model's input size (fvcore's convention, as both papers
report). Norms, softmax, GELU, pooling and adds are not counted. Counting uses
forward hooks on shapes only, so it works on the meta device without
allocating weights. Nothing here knows a model library's attribute names.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from ..core.interfaces import AncestryAdapter, MacRule

Convention = Literal["true", "published"]


def count_params(module: nn.Module, *, convention: Convention = "true") -> int:
    """Parameters of ``module``, each shared tensor counted once.

    ``convention="published"`` reproduces the SN-Net code: a *stitched*
    descendant (more than one segment) is counted without the parameters its
    first row's adapter lists in ``published_exclusions`` (a DeiT's class
    token and position embedding); a single network is counted whole.
    """
    seen: set[int] = set()
    total = 0
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    if convention == "published":
        path = getattr(module, "path", None)
        if path is not None and len(path.segments) > 1:
            params = dict(module.named_parameters())
            for name in getattr(module, "published_exclusions", ()):
                if name in params:
                    total -= params[name].numel()
    elif convention != "true":
        raise ValueError(f"unknown counting convention {convention!r}; use 'true' or 'published'")
    return total


def count_macs(
    module: nn.Module | AncestryAdapter,
    input_size: tuple[int, ...] | None = None,
    *,
    extra: Mapping[nn.Module, MacRule] | None = None,
) -> int:
    """MACs of one forward pass for one image of ``input_size`` (per-image input shape, e.g. (C, H, W)).

    ``module`` may be an adapter (its network, input size and declared
    uncounted MACs are used) or any module; a descendant carries its rows'
    declarations itself. ``extra`` adds rules ``(module, inputs, output) -> MACs``
    for modules that Linear/Conv hooks do not see.
    """
    rules: dict[nn.Module, MacRule] = {}
    if isinstance(module, AncestryAdapter):
        rules.update(module.uncounted_macs())
        input_size = input_size or module.input_size
        module = module.model
    rules.update(getattr(module, "uncounted_macs", None) or {})
    rules.update(extra or {})
    if input_size is None:
        input_size = getattr(module, "input_size", None)
        if input_size is None:
            raise ValueError("count_macs needs input_size (C, H, W) for this module")
    total = 0

    def linear(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += (inp[0].numel() // m.in_features) * m.in_features * m.out_features

    def conv(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def declared(rule: MacRule):  # noqa: ANN202
        def hook(m: nn.Module, inp, out) -> None:
            nonlocal total
            total += int(rule(m, inp, out))

        return hook

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        if m in rules:
            handles.append(m.register_forward_hook(declared(rules[m])))
    try:
        param = next(module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros((1, *input_size), device=device, dtype=dtype))
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def measure_latency(
    module: nn.Module,
    input_size: tuple[int, ...] | None = None,
    *,
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    device: torch.device | str | None = None,
) -> float:
    """Median wall time (ms) of a forward pass on the current device, after warm-up."""
    if input_size is None:
        input_size = module.input_size  # type: ignore[assignment]
    param = next(module.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn((batch_size, *input_size), device=device, dtype=dtype)  # type: ignore[misc]  # the weights' dtype (bf16, f64 pools)
    was_training = module.training
    module.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            module(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    module.train(was_training)
    return statistics.median(times)
