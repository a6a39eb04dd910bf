"""Parameters, MACs and latency, counted the way the papers count them.

MACs are multiply-accumulates of linear and convolution layers plus the two
attention matmuls (q @ k^T and attn @ v), per image, at the model's input size
(fvcore's convention, as both papers report). Norms, softmax, GELU and adds
are not counted. Counting uses forward hooks on shapes only, so it works on
the meta device without allocating weights.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch
from torch import nn

Convention = Literal["true", "published"]


def count_params(module: nn.Module, *, convention: Convention = "true") -> int:
    """Parameters of ``module``, each shared tensor counted once.

    ``convention="published"`` reproduces the SN-Net code: a *stitched*
    descendant (more than one segment) is counted without its class token
    and position embedding; a single network is counted whole.
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
            stem = getattr(module, "stem", None)
            for attr in ("cls_token", "pos_embed"):
                t = getattr(stem, attr, None)
                if isinstance(t, torch.Tensor):
                    total -= t.numel()
    elif convention != "true":
        raise ValueError(f"unknown counting convention {convention!r}; use 'true' or 'published'")
    return total


def _is_attention(m: nn.Module) -> bool:
    return hasattr(m, "num_heads") and hasattr(m, "qkv") and hasattr(m, "head_dim")


def count_macs(module: nn.Module, input_size: tuple[int, ...] | None = None) -> int:
    """MACs of one forward pass for one image of ``input_size`` (C, H, W)."""
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

    def attention(m: nn.Module, inp, out) -> None:
        nonlocal total
        b, n, _ = inp[0].shape
        total += 2 * b * n * n * m.num_heads * m.head_dim

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        if _is_attention(m):
            handles.append(m.register_forward_hook(attention))
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
