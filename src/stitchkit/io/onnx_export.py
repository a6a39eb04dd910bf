"""Optional ONNX export of an exported descendant, checked against PyTorch.

Needs the ``onnx`` extra (``pip install 'stitchkit[onnx]'``); the check needs
``onnxruntime`` and is skipped (returns ``None``) without it.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings

import torch

from ..core.errors import ConfigError
from .files import atomic_write, refuse_overwrite


def _load_model(path: str | os.PathLike, timm_state_dict: bool) -> tuple[torch.nn.Module, tuple[int, ...], dict[str, str]]:
    """The model, its input size, and the data info (preprocessing, classes) to store in the ONNX file."""
    if timm_state_dict:  # the row's own network, rebuilt through the adapter the file records
        from safetensors import safe_open

        from .storage import load_plain_row

        adapter = load_plain_row(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        props = {k: meta[k] for k in ("stitchkit_preprocessing", "stitchkit_classes") if k in meta}
        return adapter.model, adapter.input_size, props
    from .storage import load_exported

    model = load_exported(path)
    props = {}
    if getattr(model, "preprocessing", None):
        props = {"stitchkit_preprocessing": json.dumps(model.preprocessing, sort_keys=True), "stitchkit_classes": json.dumps(model.classes or [])}
    return model, model.input_size, props


def export_onnx(model_file: str | os.PathLike, onnx_path: str | os.PathLike, *, timm_state_dict: bool = False,
                batch_size: int = 2, atol: float = 1e-4) -> float | None:
    """Write ``onnx_path`` from an exported descendant; return max |ONNX - PyTorch| (or None
    when onnxruntime is not installed). Raises ConfigError if the outputs disagree beyond ``atol``.

    The ONNX file's metadata holds ``stitchkit_preprocessing`` (timm's data config, JSON) and
    ``stitchkit_classes`` (JSON list) when the source file has them."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ConfigError("ONNX export needs the onnx package: pip install 'stitchkit[onnx]'") from exc
    model, input_size, props = _load_model(model_file, timm_state_dict)
    model.eval()
    x = torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0))
    out = pathlib.Path(onnx_path)
    refuse_overwrite(out, [model_file], "ONNX output")

    diff: list[float] = []

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter is deprecated but needs no onnxscript and handles ViTs exactly
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), tmp, input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        if props:  # the preprocessing (timm's data config) and class names, readable with onnxruntime's custom_metadata_map
            import onnx

            proto = onnx.load(tmp)
            onnx.helper.set_model_props(proto, props)
            onnx.save(proto, tmp)
        diff.extend(_check(model, x, tmp, out, atol))  # before the rename: a model that disagrees is never written

    atomic_write(out, write)
    return diff[0] if diff else None


def _check(model: torch.nn.Module, x: torch.Tensor, onnx_file: str, out: pathlib.Path, atol: float) -> list[float]:
    """``[max |ONNX - PyTorch|]`` on ``x`` (empty without onnxruntime); a ConfigError naming ``out`` beyond ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    diff = float((got - expected).abs().max())
    if diff > atol:
        raise ConfigError(f"{out}: ONNX output differs from PyTorch by {diff:.3e} (> {atol}); nothing was written there")
    return [diff]
