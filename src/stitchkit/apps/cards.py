"""Model cards (README.md) for pools and exported descendants, generated from a file's metadata alone.

Why: a pool or descendant found on its own (on the Hub, in a shared folder)
must say what it is, how it was trained, how accurate each network is and how
to load it. Everything here comes from the metadata the file carries (and that
its digest protects), so the same file always gives the same card. The front
matter follows the Hugging Face model-card convention (``library_name``,
``tags``, ``datasets``, ``metrics``, ``pipeline_tag``).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.spec import Path, RowShape
from ..io.files import write_text_atomic
from ..io.header import read_pool_metadata
from .report import file_descendants_table, stored_sizes

_METHODS = {
    "learngene-pool": "Learngene Pool (Shi et al., AAAI 2024): blocks of small auxiliary models distilled from one "
                      "ancestry, stitched into descendants by learned stitch layers",
    "snnet": "SN-Net (Pan et al., CVPR 2023): pretrained anchors stitched by least-squares-initialised stitch layers",
    "snnetv2": "SN-Netv2 (Pan et al.): two anchors stitched both ways with low-rank stitch layers",
    "sequential": "rows stitched in order, narrow to wide (stitchkit's core stitching)",
}
#: Keys of a build config's ``[train]`` table worth a line in a card (in this order), when present.
_RECIPE_KEYS = ("epochs", "max_steps", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs", "scheduler",
                "label_smoothing", "mixup", "cutmix", "seed", "device", "precision")


def _yaml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _front_matter(method: str, info: Mapping[str, Any], has_accuracy: bool, extra_tags: Sequence[str] = ()) -> list[str]:
    tags = ["stitchkit", "image-classification", "model-stitching", method, *extra_tags]
    lines = ["---", "library_name: stitchkit", f"tags: {_yaml_list(list(dict.fromkeys(tags)))}",
             "pipeline_tag: image-classification"]
    dataset = _dataset(info)
    if dataset:
        lines.append(f"datasets: {_yaml_list([dataset])}")
    if has_accuracy:
        lines.append("metrics: [\"accuracy\"]")
    return [*lines, "---", ""]


def _dataset(info: Mapping[str, Any]) -> str | None:
    prov = info.get("provenance") or {}
    data = (prov.get("config") or {}).get("data") or prov.get("data") or {}
    if isinstance(data, Mapping) and data.get("source"):
        return str(data["source"])
    return str(prov["dataset"]) if isinstance(prov.get("dataset"), str) else None


def _num(value: Any, fmt: str = ",") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _acc(results: Mapping[str, Any] | None, key: str) -> str:
    value = (results or {}).get(key)
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _row_lines(rows: Sequence[Mapping[str, Any]], params: Sequence[int] | None) -> list[str]:
    lines = ["| row | adapter | shape (depth x width : heads) | from timm model | params |", "|---:|---|---|---|---:|"]
    for i, row in enumerate(rows):
        shape = RowShape.from_json(dict(row))
        name = (row.get("arch") or {}).get("timm_name") or "-"
        lines.append(f"| {row.get('row', i)} | `{row['adapter']}` | {shape} | {name} | "
                     f"{_num(params[i]) if params is not None else '-'} |")
    return lines


def _stitch_summary(stitches: Sequence[Mapping[str, Any]]) -> str:
    if not stitches:
        return "no stitch layers"
    ranks = sorted({s["rank"] for s in stitches if "rank" in s})
    layouts = sorted({f"{s.get('src_layout', 'tokens')} -> {s.get('dst_layout', 'tokens')}" for s in stitches})
    kind = f"low-rank (rank {', '.join(map(str, ranks))})" if ranks else "full-rank"
    return f"{len(stitches)} {kind} stitch layer{'s' if len(stitches) != 1 else ''} ({'; '.join(layouts)})"


def _data_lines(info: Mapping[str, Any]) -> list[str]:
    data = info.get("data") or {}
    lines = []
    classes = data.get("classes")
    if classes:
        shown = ", ".join(f"`{c}`" for c in classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        lines.append(f"- classes, in label order: {shown}")
    pre = data.get("preprocessing")
    if pre:
        lines.append("- preprocessing (timm data config): " + ", ".join(f"{k} `{json.dumps(v)}`" for k, v in pre.items()))
    for split, where in (data.get("splits") or {}).items():
        lines.append(f"- {split} split: {where if isinstance(where, str) else json.dumps(where)}")
    return lines


def _training_lines(info: Mapping[str, Any], method: str) -> list[str]:
    prov = dict(info.get("provenance") or {})
    config = prov.pop("config", None) or {}
    lines = []
    train = config.get("train") if isinstance(config, Mapping) else None
    if isinstance(train, Mapping):
        recipe = [f"{k} {json.dumps(train[k])}" for k in _RECIPE_KEYS if k in train]
        if recipe:
            lines.append("- recipe (`[train]`): " + ", ".join(recipe))
    for name in dict.fromkeys([method, method.split("-")[0]]):  # the method's own section: [learngene], [snnet], ...
        section = config.get(name) if isinstance(config, Mapping) else None
        if isinstance(section, Mapping) and section:
            lines.append(f"- `[{name}]`: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in section.items()))
            break
    for name in dict.fromkeys([method, method.split("-")[0]]):  # the build's own record: anchors, steps, timings, ...
        record = info.get(name)
        if isinstance(record, Mapping) and record:
            lines.append(f"- the build's record (`info.{name}`): " + ", ".join(f"{k} {_short(v)}" for k, v in record.items()))
            break
    for kind, comp in (info.get("components") or {}).items():
        opts = ", ".join(f"{k}={json.dumps(v)}" for k, v in (comp.get("options") or {}).items())
        lines.append(f"- {kind}: `{comp.get('name')}`" + (f" ({opts})" if opts else ""))
    if prov:
        lines.append(f"- provenance: `{json.dumps(prov, sort_keys=True)}`")
    return lines


def _short(value: Any, limit: int = 160) -> str:
    """``value`` as compact JSON, cut at ``limit`` characters (a card lists a record, it does not dump it)."""
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "))
    return f"`{text if len(text) <= limit else text[:limit] + ' ...'}`"


def _method_line(method: str) -> str:
    return _METHODS.get(method, f"the `{method}` method (a stitchkit plugin)")


def pool_card(meta: Mapping[str, Any], descendants: Sequence[Mapping[str, Any]], row_params: Sequence[int],
              storage_params: int, file_name: str) -> str:
    """A pool file's card: ``meta`` as :func:`~stitchkit.io.header.read_pool_metadata` returns it,
    ``descendants`` as :func:`~stitchkit.apps.report.file_descendants_table`."""
    desc = meta["pool"]
    method, info = desc["method"], desc.get("info") or {}
    accurate = any("top1" in d for d in descendants)
    ancestry = info.get("ancestry") or {}
    lines = _front_matter(method, info, accurate)
    lines += [f"# {file_name}", "",
              f"A stitchkit **pool**: {len(descendants)} image classifiers of different sizes that share one set of weights, "
              f"built by {_method_line(method)}. Any of them is loaded alone, reading only its own tensors.", ""]
    if ancestry:
        name = ancestry.get("timm_name") or ancestry.get("name") or json.dumps(ancestry, sort_keys=True)
        lines += [f"Ancestry: {name}.", ""]
    anchors = (info.get(method) or {}).get("anchors") if isinstance(info.get(method), Mapping) else None
    if isinstance(anchors, list) and all(isinstance(a, Mapping) for a in anchors):  # SN-Net's record of its anchors
        lines += ["Anchors: " + ", ".join(
            f"{a.get('source', '?')} ({a.get('weights', 'weights unknown')}{', trained here' if a.get('trained_here') else ''})"
            for a in anchors) + ".", ""]
    lines += ["## Rows and stitch layers", "", *_row_lines(desc["rows"], row_params), "",
              f"{_stitch_summary(desc['stitches'])}; {_num(storage_params)} parameters stored in all"
              + (" (stitched descendants skip the end row's final norm, as the official SN-Net code)"
                 if desc.get("stitched_final_norm") is False else "") + ".", ""]
    lines += ["## Descendants", "", "Params and MACs (multiply-accumulates of one forward pass, one image) count every "
              "parameter once; top-1 / top-5 (%) are the pool's own evaluation"
              + (f" on its {info['provenance']['eval_split']} split" if (info.get("provenance") or {}).get("eval_split") else "")
              + ".", "",
              "| # | descendant | label | blocks | params | MACs | top-1 | top-5 |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for d in descendants:
        lines.append(f"| {d['index']} | `{d['name']}` | {d.get('label') or ''} | {d['blocks']} | {_num(d['params'])} | "
                     f"{_num(d['macs'])} | {_acc(d, 'top1')} | {_acc(d, 'top5')} |")
    lines.append("")
    data, training = _data_lines(info), _training_lines(info, method)
    if data:
        lines += ["## Data", "", *data, ""]
    if training:
        lines += ["## Training", "", *training, ""]
    best = max((d for d in descendants if "top1" in d), key=lambda d: (d["top1"], -d["params"]), default=None)
    key = best["name"] if best else (descendants[-1]["name"] if descendants else "0")
    lines += ["## Load", "", "```python", "import stitchkit", "",
              f"pool = stitchkit.load_pool({file_name!r})  # every descendant",
              f"model = stitchkit.load_descendant({file_name!r}, {key!r}).eval()  # one, reading only its tensors",
              "```", "",
              f"`stitchkit select {file_name} --max-params N` picks the most accurate descendant within a budget; "
              f"`stitchkit export {file_name} DESCENDANT --hf DIR` writes one as a timm / Hugging Face folder.", ""]
    lines += _format_lines(meta)
    return "\n".join(lines)


def _format_lines(meta: Mapping[str, Any]) -> list[str]:
    out = ["## File", "", f"stitchkit file format version {meta['format_version']} (docs/format.md), "
           f"written by {meta.get('writer') or 'stitchkit'}; safetensors with `format: pt`."]
    if meta.get("metadata_sha256"):
        out[-1] += f" Metadata sha256 `{meta['metadata_sha256']}`."
    return [*out, ""]


def descendant_card(desc: Mapping[str, Any], *, params: int | None, macs: int | None, folder_name: str,
                    timm_architecture: str | None, meta: Mapping[str, Any]) -> str:
    """The card of an export folder: ``desc`` is the descendant description (docs/format.md, section 4).

    ``timm_architecture``: the timm model a single-row descendant loads as (None: stitched, stitchkit loads it).
    """
    method, info = desc["method"], desc.get("info") or {}
    path = Path.from_json(desc["path"])
    evaluation = desc.get("evaluation") or {}
    lines = _front_matter(method, info, "top1" in evaluation, ["timm"] if timm_architecture else [])
    what = ("a plain timm network (one whole row of the pool)" if timm_architecture else
            f"stitched from {len(path.segments)} rows by {len(path.stitches)} stitch layer(s)")
    lines += [f"# {folder_name}", "",
              f"Descendant `{desc['name']}`{' (' + path.label + ')' if path.label else ''} of a stitchkit pool built by "
              f"{_method_line(method)}: {what}.", "",
              "| params | MACs | top-1 | top-5 |", "|---:|---:|---:|---:|",
              f"| {_num(params)} | {_num(macs)} | {_acc(evaluation, 'top1')} | {_acc(evaluation, 'top5')} |", "",
              "Top-1 / top-5 (%): the pool's own evaluation of this descendant; MACs: one forward pass, one image.", "",
              "## Architecture", "", *_row_lines(desc["rows"], None), "",
              "Blocks: " + ", then ".join(f"blocks {s.start}-{s.stop - 1} of row {s.row}" for s in path.segments) + ".", ""]
    data, training = _data_lines(info), _training_lines(info, method)
    if data:
        lines += ["## Data", "", *data, ""]
    if training:
        lines += ["## Training", "", *training, ""]
    lines += ["## Load", "", "```python"]
    if timm_architecture:
        lines += ["import timm", "", f"model = timm.create_model(\"local-dir:{folder_name}\", pretrained=True).eval()",
                  "# or, from the Hub: timm.create_model(\"hf-hub:ORG/NAME\", pretrained=True)"]
    else:
        lines += ["import stitchkit", "", f"model = stitchkit.load_exported({folder_name!r})  # eval mode, .transform, .classes"]
    lines += ["```", "", f"timm builds it through its `{timm_architecture}` entry point with the model arguments in "
              "`config.json`; `stitchkit.load_exported(FOLDER)` loads it too." if timm_architecture else "", ""]
    lines += _format_lines(meta)
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def write_pool_card(pool_file: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Write the card of a pool file (default: ``POOL.md`` beside it, e.g. ``pool.md``); returns its path."""
    src = pathlib.Path(pool_file)
    meta = read_pool_metadata(src)
    sizes = stored_sizes(meta, path=src)
    text = pool_card(meta, file_descendants_table(meta, path=src), sizes["rows"], sizes["storage_params"], src.name)
    dst = pathlib.Path(out) if out is not None else src.with_suffix(".md")
    write_text_atomic(dst, text)
    return dst
