"""A pool or descendant file's header and metadata, read and checked with the standard library alone.

Why a module of its own: ``stitchkit info`` and every loader start by reading
the 8-byte length, the JSON header and the JSON descriptions stitchkit keeps in
``__metadata__``; none of that needs torch, and importing torch costs seconds.
:mod:`stitchkit.io.storage` builds the modules and reads tensors on top of this.
Every problem is one :class:`~stitchkit.core.errors.PoolFormatError` naming the file.
The byte layout and schemas are specified in ``docs/format.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
import os
import pathlib
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core import limits
from ..core.errors import ConfigError, FileError, LimitError, PathError, PoolFormatError
from .files import open_regular
from ..core.spec import LAYOUTS, Path, RowShape, StitchSpec, find_path

#: The file kinds, in ``__metadata__[KIND_KEY]`` (format 3) or in ``__metadata__["format"]`` (formats 1 and 2).
POOL_FORMAT = "stitchkit-pool"
DESCENDANT_FORMAT = "stitchkit-descendant"
#: One network written by ``stitchkit train`` (:func:`stitchkit.engine.model.save_model`).
MODEL_FORMAT = "stitchkit-model"
#: A single-row descendant written as its row's own state dict (``export_timm_state_dict``, ``export --hf``).
PLAIN_FORMAT = "stitchkit-plain-model"
#: ``format``, the key Hugging Face loaders check: always ``pt`` since format 3 (the tensors are PyTorch's).
HF_FORMAT = "pt"
#: The metadata key holding the file's kind since format 3.
KIND_KEY = "stitchkit_format"
#: The metadata key holding the sha256 of every other metadata entry (format 3).
DIGEST_KEY = "metadata_sha256"
FORMAT_VERSION = "3"
#: format_version values this reader understands ("1": ViT-only pools, before
#: hierarchical rows and convolutional stitch layers; read as all-token stitches;
#: "2": the kind in ``format`` and no metadata digest; "3": ``format: pt``, the kind in
#: ``stitchkit_format``, ``metadata_sha256``).
SUPPORTED_VERSIONS = ("1", "2", "3")
#: Versions written before the metadata digest: they load with a notice.
UNDIGESTED_VERSIONS = ("1", "2")

_log = logging.getLogger("stitchkit")
_noticed: set[pathlib.Path] = set()
#: The same limit safetensors itself enforces on the JSON header.
MAX_HEADER_BYTES = 100_000_000

PathLike = str | os.PathLike

#: Every dtype the format allows: safetensors name -> bytes per element.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


# --------------------------------------------------------------------------- schemas
# A small JSON-Schema subset (type, properties, required, additionalProperties,
# items, minItems, maxItems, minimum, minLength, pattern, enum), checked by
# _check_schema. Unknown keys are allowed everywhere: see "Versioning" in docs/format.md.
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}
_COUNT = {"type": "integer", "minimum": 0}
_POSITIVE = {"type": "integer", "minimum": 1}
STITCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "src", "dst", "src_width", "dst_width"],
    "properties": {
        "name": _NAME, "src": _COUNT, "dst": _COUNT, "src_width": _POSITIVE, "dst_width": _POSITIVE,
        "src_layout": {"type": "string", "enum": list(LAYOUTS)}, "dst_layout": {"type": "string", "enum": list(LAYOUTS)},
        # low-rank stitch layers (an extension of version 1): tensors lora_A, lora_B beside weight, bias
        "rank": _POSITIVE, "alpha": {"type": "number"},
    },
}
PATH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["segments", "stitches"],
    "properties": {
        "segments": {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": _COUNT}},
        "stitches": {"type": "array", "items": _NAME},
        "label": {"type": "string"},
    },
}
_ROW_PROPERTIES = {
    "adapter": {"type": "string", "minLength": 1},
    "arch": {"type": "object"},
    "depth": _POSITIVE,
    "width": _POSITIVE,
    "heads": _COUNT,
    "stages": {"type": "array", "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": _COUNT}},
}
#: Optional ``sizes`` of a pool description (written since stitchkit 0.1; ``info`` recomputes them when absent).
SIZES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["convention", "storage_params", "rows", "descendants"],
    "properties": {
        "convention": {"type": "string", "minLength": 1},
        "storage_params": _COUNT,
        "rows": {"type": "array", "items": _COUNT},
        "descendants": {
            "type": "array",
            "items": {"type": "object", "required": ["params", "macs"], "properties": {"params": _COUNT, "macs": _COUNT}},
        },
    },
}
POOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["method", "rows", "stitches", "paths", "info", "evaluation", "extras"],
    "properties": {
        "method": {"type": "string", "minLength": 1},
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "object", "required": ["adapter", "arch", "depth", "width", "heads"], "properties": _ROW_PROPERTIES},
        },
        "stitches": {"type": "array", "items": STITCH_SCHEMA},
        "paths": {"type": "array", "items": PATH_SCHEMA},
        "info": {"type": "object"},
        "evaluation": {"type": "object", "additionalProperties": {"type": "object"}},
        "extras": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "sizes": SIZES_SCHEMA,
        "stitched_final_norm": {"type": "boolean"},
    },
}
DESCENDANT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "path", "method", "rows", "stitches", "info", "evaluation"],
    "properties": {
        "name": {"type": "string"},
        "path": PATH_SCHEMA,
        "method": {"type": "string", "minLength": 1},
        "rows": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["row", "adapter", "arch", "depth", "width", "heads"],
                "properties": {"row": _COUNT, **_ROW_PROPERTIES},
            },
        },
        "stitches": {"type": "array", "items": STITCH_SCHEMA},
        "info": {"type": "object"},
        "evaluation": {"type": ["object", "null"]},
        "stitched_final_norm": {"type": "boolean"},
    },
}
TENSORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["dtype", "shape"],
        "properties": {"dtype": {"type": "string", "enum": sorted(DTYPE_SIZES)}, "shape": {"type": "array", "items": _COUNT}},
    },
}

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class _SchemaError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"at {where or 'the top level'}: {problem}")


def _type_name(value: Any) -> str:
    for name, test in _JSON_TYPES.items():
        if name != "number" and test(value):
            return name
    return "number" if _JSON_TYPES["number"](value) else type(value).__name__


def _plain_counts(value: list[Any], items: Mapping[str, Any]) -> bool:
    """True if every item is a plain int that ``items`` (a bare integer schema) accepts: a tensor shape."""
    if items.keys() - {"type", "minimum"} or items.get("type") != "integer":
        return False
    low = items.get("minimum", -math.inf)
    return all(type(v) is int and v >= low for v in value)


def _check_schema(value: Any, schema: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`_SchemaError` where ``value`` breaks ``schema`` (the subset above)."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not (_JSON_TYPES[types[0]](value) or any(_JSON_TYPES[t](value) for t in types[1:])):
            raise _SchemaError(where, f"expected {' or '.join(types)}, got {_type_name(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise _SchemaError(where, f"{value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise _SchemaError(where, "empty string")
        if "pattern" in schema and not re.search(schema["pattern"], value):  # JSON Schema: search
            raise _SchemaError(where, f"{value!r} does not match {schema['pattern']}")
    if _JSON_TYPES["number"](value) and "minimum" in schema and value < schema["minimum"]:
        raise _SchemaError(where, f"{value} is below the minimum {schema['minimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise _SchemaError(where, f"needs at least {schema['minItems']} items, has {len(value)}")
        if len(value) > schema.get("maxItems", math.inf):
            raise _SchemaError(where, f"allows at most {schema['maxItems']} items, has {len(value)}")
        items = schema.get("items")
        if items is not None and not _plain_counts(value, items):  # a fast pass for shapes; errors come from the loop
            for i, item in enumerate(value):
                _check_schema(item, items, f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                raise _SchemaError(where, f"missing required key {key!r}")
        props = schema.get("properties", {})
        for key, item in value.items():
            sub = props.get(key, schema.get("additionalProperties"))
            if sub is not None:
                _check_schema(item, sub, f"{where}.{key}" if where else key)


# --------------------------------------------------------------------------- header
@dataclass
class _Header:
    """A safetensors header that passed stitchkit's byte-level checks."""

    path: pathlib.Path
    length: int  # N, the JSON header's byte length
    entries: dict[str, dict[str, Any]]  # tensor name -> {dtype, shape, data_offsets}
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + self.length


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity (what other languages' parsers accept)."""
    return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_no_constant)


def _check_containers(p: pathlib.Path, text: str, what: str) -> None:
    """Refuse JSON with more objects and arrays than any real pool needs, before parsing it (a cheap count)."""
    n = text.count("{") + text.count("[")
    if n > limits.MAX_JSON_CONTAINERS:
        raise PoolFormatError(
            p, f"{what} holds {n:,} JSON objects and arrays, above the limit of {limits.MAX_JSON_CONTAINERS:,} "
            "(stitchkit.core.limits.MAX_JSON_CONTAINERS); not a file stitchkit wrote"
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=False)


def _read_header(path: PathLike) -> _Header:
    """Read and check the 8-byte length and the JSON header; never touches tensor data."""
    p = pathlib.Path(path)
    try:
        fd = open_regular(p, "pool file")
    except FileError as exc:
        raise PoolFormatError(p, str(exc).removeprefix(f"{p}: ")) from None
    try:
        with open(fd, "rb") as f:  # the builtin takes the checked descriptor
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise PoolFormatError(
                    p, f"file is {file_size} bytes, too short for a safetensors file "
                    "(it starts with an 8-byte header length); truncated or not a pool file"
                )
            (n,) = struct.unpack("<Q", prefix)
            if n > file_size - 8:
                raise PoolFormatError(
                    p, f"header length field says {n} bytes but only {file_size - 8} bytes follow it; "
                    "the file is truncated or not a safetensors file"
                )
            if n > MAX_HEADER_BYTES:
                raise PoolFormatError(p, f"header of {n} bytes exceeds the safetensors limit of {MAX_HEADER_BYTES}")
            raw = f.read(n)
    except FileNotFoundError:
        raise PoolFormatError(p, "file not found") from None
    except IsADirectoryError:
        raise PoolFormatError(p, "is a directory, not a pool file") from None
    except OSError as exc:
        raise PoolFormatError(p, f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PoolFormatError(p, "header is not UTF-8 text: not a safetensors file") from None
    if not text.startswith("{"):
        raise PoolFormatError(p, "header does not start with '{': not a safetensors file")
    _check_containers(p, text, "the header")
    try:
        header = _loads(text)
    except (ValueError, RecursionError) as exc:
        raise PoolFormatError(p, f"header is not valid JSON ({exc}): not a safetensors file") from None
    if not isinstance(header, dict):
        raise PoolFormatError(p, "header JSON is not an object: not a safetensors file")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise PoolFormatError(p, "__metadata__ must map strings to strings")
    entries: dict[str, dict[str, Any]] = {}
    spans = []
    for name, entry in header.items():
        entries[name] = _check_entry(p, name, entry)
        spans.append((*entry["data_offsets"], name))
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise PoolFormatError(
                p, f"tensor {name!r} starts at data byte {begin}, expected {expected}: "
                "tensors overlap or leave a gap"
            )
        expected = end
    data = file_size - 8 - n
    if expected > data:
        raise PoolFormatError(
            p, f"truncated: the tensors need {expected} bytes of data after the header but the file holds {data}"
        )
    if expected < data:
        raise PoolFormatError(p, f"{data - expected} unexplained bytes after the last tensor")
    return _Header(p, n, entries, metadata)


def _check_entry(p: pathlib.Path, name: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise PoolFormatError(p, f"header entry {name!r} needs dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise PoolFormatError(p, f"tensor {name!r} has unsupported dtype {dtype!r} (supported: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_JSON_TYPES["integer"](d) and d >= 0 for d in shape):
        raise PoolFormatError(p, f"tensor {name!r} has an invalid shape {shape!r} (a list of non-negative integers)")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(_JSON_TYPES["integer"](o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise PoolFormatError(p, f"tensor {name!r} has invalid data_offsets {offsets!r} (two integers, begin <= end)")
    need = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != need:
        raise PoolFormatError(
            p, f"tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes but "
            f"{dtype} {shape} needs {need}"
        )
    return entry


# --------------------------------------------------------------------------- metadata
def metadata_digest(meta: Mapping[str, str]) -> str:
    """The sha256 (hex) of every ``__metadata__`` entry but the digest itself, as sorted compact JSON.

    Why: a one-value edit of the description (a row's ``global_pool``, the class
    order, ``stitched_final_norm``) changes what a descendant computes while every
    structural check still passes; the digest makes any such edit fail the load.
    It covers ``data_sha256`` too, so the tensors' checksum cannot be swapped either.
    """
    body = {k: meta[k] for k in sorted(meta) if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")).hexdigest()


def kind_of_file(path: PathLike) -> str | None:
    """The kind a safetensors file declares (:func:`file_kind`), read with the standard library; None if unreadable."""
    try:
        return file_kind(_read_header(path).metadata or {})
    except (PoolFormatError, FileError, OSError):
        return None


def file_kind(meta: Mapping[str, str]) -> str | None:
    """What a stitchkit file holds (``stitchkit-pool``, ...): ``stitchkit_format`` since format 3, ``format`` before."""
    found = meta.get("format")
    return meta.get(KIND_KEY) if found == HF_FORMAT else found


def stamp(meta: Mapping[str, str]) -> dict[str, str]:
    """``meta`` with ``format: pt`` and its digest: the metadata every format-3 writer stores."""
    out = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    out["format"] = HF_FORMAT
    out[DIGEST_KEY] = metadata_digest(out)
    return out


def check_digest(p: pathlib.Path, meta: Mapping[str, str]) -> None:
    """Refuse a format-3 file whose metadata is not what was written (any edited, added or removed entry)."""
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        raise PoolFormatError(
            p, f"format_version {meta.get('format_version')!r} files carry {DIGEST_KEY!r} in __metadata__ but this one has none; "
            "the metadata was edited: restore the file or export it again"
        )
    if metadata_digest(meta) != stored:
        raise PoolFormatError(
            p, f"the metadata does not match the {DIGEST_KEY} stored when the file was written (an entry was edited, "
            "added or removed); it may compute something else: restore the file or export it again"
        )


def _check_version(p: pathlib.Path, meta: Mapping[str, str]) -> str:
    """The file's supported format_version, its ``format``/version pairing and (format 3) its digest checked."""
    ver = meta.get("format_version")
    if ver is None:
        raise PoolFormatError(p, "missing format_version in __metadata__")
    if ver not in SUPPORTED_VERSIONS:
        raise PoolFormatError(
            p, f"format_version {ver!r} is not supported by this stitchkit (it reads {', '.join(SUPPORTED_VERSIONS)}); "
            "upgrade stitchkit to read it"
        )
    legacy = meta.get("format") != HF_FORMAT
    if legacy != (ver in UNDIGESTED_VERSIONS):
        raise PoolFormatError(
            p, f"format_version {ver!r} does not go with format {meta.get('format')!r} (versions 1 and 2 name the kind "
            f"in 'format', version 3 and later have format 'pt'); the metadata was edited: restore the file"
        )
    if legacy:
        if p not in _noticed:  # once per file and process: a notice, not an error (old files keep loading)
            _noticed.add(p)
            _log.warning(f"stitchkit: note: {p} is a format-{ver} file, written before metadata digests, so edits to "
                         "its metadata cannot be detected; save it again to upgrade it")
    else:
        check_digest(p, meta)
    return ver


def _check_metadata(h: _Header, fmt: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check kind, version and digest, parse the description and the tensor index, match them to the header."""
    p, meta = h.path, h.metadata or {}
    found = file_kind(meta)
    if found != fmt:
        if found in (POOL_FORMAT, DESCENDANT_FORMAT):
            hint = "use load_pool / load_descendant" if found == POOL_FORMAT else "use load_exported"
            raise PoolFormatError(p, f"is a {found} file, not a {fmt} file; {hint}")
        if found == PLAIN_FORMAT:
            raise PoolFormatError(
                p, f"is a plain model (a single-row descendant with its model's own keys), not a {fmt} file; "
                "load it with timm (docs/format.md, section 4.1) or TimmViT.load_checkpoint"
            )
        if "format" not in meta:
            what = "no 'format' key in __metadata__"
        elif meta["format"] == HF_FORMAT:
            what = "its format is 'pt'" + (f", its {KIND_KEY} {found!r}" if found is not None else f" and it has no {KIND_KEY!r}")
        else:
            what = f"its format is {meta['format']!r}"
        raise PoolFormatError(
            p, f"a safetensors file that stitchkit did not write as a {fmt} ({what}); "
            "plain model weights load with TimmViT.load_checkpoint"
        )
    _check_version(p, meta)
    key, schema = ("pool", POOL_SCHEMA) if fmt == POOL_FORMAT else ("descendant", DESCENDANT_SCHEMA)
    desc = _parse_json(p, meta, key, schema)
    index = _parse_json(p, meta, "tensors", TENSORS_SCHEMA, lambda v: _repeats_header(v, h.entries))
    _match_index(p, index, {n: (e["dtype"], e["shape"]) for n, e in h.entries.items()}, "the file", "the metadata")
    _check_bounds(p, desc, index, fmt)
    return desc, index


def _check_bounds(p: pathlib.Path, desc: Mapping[str, Any], index: Mapping[str, Any], fmt: str) -> None:
    """Bound before you build: sizes within :mod:`stitchkit.core.limits`, and as many blocks declared as the file holds.

    A row declaring ``depth`` blocks needs at least one tensor per block in the
    file, whatever the family; so metadata can never make a reader build more
    modules than the file has tensors.
    """
    try:
        for r, row in enumerate(desc["rows"]):
            where = f"row {row.get('row', r)}"
            limits.check_row(row["depth"], row["width"], row["heads"], where)
            limits.check_arch(row["arch"], where)
        limits.check_int(sum(row["depth"] for row in desc["rows"]), "the rows' blocks together",
                         maximum=limits.MAX_TOTAL_BLOCKS, limit="MAX_TOTAL_BLOCKS")
    except LimitError as exc:
        raise PoolFormatError(p, f"metadata is out of bounds: {exc}") from None
    if fmt == POOL_FORMAT:
        per_row = Counter(n.split(".", 2)[1] for n in index if n.startswith("rows."))
        for r, row in enumerate(desc["rows"]):
            if per_row[str(r)] < row["depth"]:
                raise PoolFormatError(
                    p, f"row {r} declares {row['depth']} blocks but the file holds only {per_row[str(r)]} tensors "
                    "for it (every block has at least one); the metadata does not describe this file"
                )
    else:
        blocks = {tuple(n.split(".", 3)[1:3]) for n in index if n.startswith("segments.")}
        for i, (_, start, stop) in enumerate(desc["path"]["segments"]):
            missing = [j for j in range(min(max(stop - start, 0), limits.MAX_DEPTH + 1)) if (str(i), str(j)) not in blocks]
            if missing:
                raise PoolFormatError(
                    p, f"segment {i} declares {stop - start} blocks but the file has no tensors 'segments.{i}.{missing[0]}.*'; "
                    "the metadata does not describe this file"
                )
    for key, value in desc.get("evaluation", {}).items() if fmt == POOL_FORMAT else ():
        _check_results(p, key, value)
    if fmt == DESCENDANT_FORMAT and desc.get("evaluation") is not None:
        _check_results(p, desc["name"], desc["evaluation"])


#: Result keys whose values must be numbers (readers format and compare them).
NUMERIC_RESULTS = ("top1", "top5", "params", "macs", "latency_ms", "loss")


def _check_results(p: pathlib.Path, name: str, results: Mapping[str, Any]) -> None:
    for key in NUMERIC_RESULTS:
        if key in results and not _JSON_TYPES["number"](results[key]):
            raise PoolFormatError(p, f"evaluation of {name}: {key!r} must be a number, got {_type_name(results[key])}")


def _parse_json(
    p: pathlib.Path, meta: Mapping[str, str], key: str, schema: Mapping[str, Any],
    passes: Callable[[Any], bool] | None = None,
) -> Any:
    """Parse ``meta[key]`` and check it against ``schema``, unless ``passes(value)`` already proves it fits."""
    if key not in meta:
        raise PoolFormatError(p, f"__metadata__ has no {key!r} entry")
    _check_containers(p, meta[key], f"metadata {key!r}")
    try:
        value = _loads(meta[key])
    except (ValueError, RecursionError) as exc:
        raise PoolFormatError(p, f"metadata {key!r} is not valid JSON: {exc}") from None
    for field, limit in (("rows", limits.MAX_ROWS), ("paths", limits.MAX_PATHS), ("stitches", limits.MAX_STITCHES)):
        items = value.get(field) if isinstance(value, dict) else None
        if isinstance(items, list) and len(items) > limit:  # before the schema walks them all
            raise PoolFormatError(p, f"metadata {key!r} lists {len(items):,} {field}, above the limit of {limit:,} (stitchkit.core.limits)")
    try:
        if passes is None or not passes(value):
            _check_schema(value, schema)
    except _SchemaError as exc:
        raise PoolFormatError(p, f"metadata {key!r} fails the schema {exc}") from None
    return value


def _repeats_header(index: Any, entries: Mapping[str, Mapping[str, Any]]) -> bool:
    """True if the tensor index lists exactly the header's tensors with their (checked) dtypes and shapes.

    Such an index fits TENSORS_SCHEMA, so checking it node by node (the slow
    part of reading a large pool's header) can be skipped; any other index is
    checked and reported as before.
    """
    if not isinstance(index, dict) or index.keys() != entries.keys():
        return False
    for name, entry in entries.items():
        listed = index[name]
        if not (isinstance(listed, dict) and listed.get("dtype") == entry["dtype"] and listed.get("shape") == entry["shape"]
                and all(type(d) is int for d in listed["shape"])):
            return False
    return True


def _match_index(
    p: pathlib.Path,
    index: Mapping[str, Mapping[str, Any]],
    found: Mapping[str, tuple[str | None, list[int]]],
    found_in: str,
    listed_in: str,
) -> None:
    """Every tensor ``listed_in`` must be ``found_in`` with the same shape (and dtype, where known)."""
    missing = sorted(set(index) - set(found))
    if missing:
        raise PoolFormatError(
            p, f"{len(missing)} tensor(s) listed in {listed_in} are missing from {found_in}: {_few(missing)}"
        )
    extra = sorted(set(found) - set(index))
    if extra:
        raise PoolFormatError(p, f"{len(extra)} tensor(s) in {found_in} are not listed in {listed_in}: {_few(extra)}")
    for name, entry in index.items():
        dtype, shape = found[name]
        if list(shape) != list(entry["shape"]):
            raise PoolFormatError(
                p, f"tensor {name!r} has shape {list(shape)} in {found_in} but {list(entry['shape'])} in {listed_in}"
            )
        if dtype is not None and dtype != entry["dtype"]:
            raise PoolFormatError(p, f"tensor {name!r} has dtype {dtype} in {found_in} but {entry['dtype']} in {listed_in}")


def _few(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")


def _check_pool_description(p: pathlib.Path, desc: dict[str, Any], index: Mapping[str, Mapping[str, Any]]) -> list[Path]:
    """Checks that need no adapter: paths, stitch tensors, extras and evaluation keys fit."""
    try:
        shapes = [RowShape.from_json(r) for r in desc["rows"]]
        specs = {s["name"]: StitchSpec.from_json(s) for s in desc["stitches"]}
        paths = [Path.from_json(d) for d in desc["paths"]]
        for path in paths:
            path.validate([s.depth for s in shapes], specs)
    except (ConfigError, PathError) as exc:
        raise PoolFormatError(p, f"metadata describes an invalid pool: {exc}") from None
    if len(specs) != len(desc["stitches"]):
        raise PoolFormatError(p, "metadata lists a stitch layer name twice")
    for s in specs.values():
        for end in (s.src, s.dst):
            if end >= len(shapes):
                raise PoolFormatError(p, f"stitch layer {s.name!r} joins row {end}, which the pool does not have")
        # widths against the rows' feature signatures are checked when the pool is rebuilt (Pool.__init__)
        # a 1x1 convolution from a feature map (stitch_layers.weight_shape; no torch import here)
        weight = [s.dst_width, s.src_width, 1, 1] if s.src_layout == "map" else [s.dst_width, s.src_width]
        tensors = [("weight", weight), ("bias", [s.dst_width])]
        if s.rank:
            tensors += [("lora_A", [s.rank, s.src_width]), ("lora_B", [s.dst_width, s.rank])]
        for suffix, shape in tensors:
            entry = index.get(f"stitches.{s.name}.{suffix}")
            if entry is None:
                raise PoolFormatError(p, f"stitch layer {s.name!r} has no tensor 'stitches.{s.name}.{suffix}'")
            if entry["shape"] != shape:
                raise PoolFormatError(
                    p, f"tensor 'stitches.{s.name}.{suffix}' has shape {entry['shape']}, but the stitch layer "
                    f"maps width {s.src_width} to {s.dst_width}{f' at rank {s.rank}' if s.rank else ''} and needs {shape}"
                )
    extras = {n[len("extras."):] for n in index if n.startswith("extras.")}
    if extras != set(desc["extras"]) or len(desc["extras"]) != len(extras):
        raise PoolFormatError(
            p, f"metadata lists extras {sorted(desc['extras'])} but the file holds extras {sorted(extras)}"
        )
    names = {path.name for path in paths}
    unknown = sorted(set(desc["evaluation"]) - names)
    if unknown:
        raise PoolFormatError(p, f"evaluation results for descendants the pool does not have: {_few(unknown)}")
    sizes = desc.get("sizes")
    if sizes is not None:
        for key, expected in (("rows", len(shapes)), ("descendants", len(paths))):
            if len(sizes[key]) != expected:
                raise PoolFormatError(p, f"metadata 'sizes.{key}' has {len(sizes[key])} entries for {expected} {key}")
    return paths


def _find_path(paths: list[Path], key: Path | int | str) -> Path:
    """The path for ``key`` (as :meth:`Pool.path` resolves it: names, then labels, then indices), from metadata alone."""
    return find_path(paths, key.name if isinstance(key, Path) else key)


class PoolHeader:
    """A pool file whose header, metadata and tensor names/shapes have all been checked (no tensor read)."""

    def __init__(self, path: PathLike) -> None:
        self.header = _read_header(path)
        self.path = self.header.path
        self.desc, self.index = _check_metadata(self.header, POOL_FORMAT)
        self.paths = _check_pool_description(self.path, self.desc, self.index)
        self.stitch_specs = {d["name"]: StitchSpec.from_json(d) for d in self.desc["stitches"]}

    def metadata_summary(self) -> dict[str, Any]:
        """``{"format", "format_version", "writer", "pool", "tensors"}`` (see :func:`read_pool_metadata`).

        ``format`` is the file's kind (``stitchkit-pool``), whichever metadata key holds it.
        """
        meta = self.header.metadata or {}
        return {
            "format": file_kind(meta),
            "format_version": meta["format_version"],
            "writer": meta.get("writer", ""),
            "metadata_sha256": meta.get(DIGEST_KEY),
            "pool": self.desc,
            "tensors": self.index,
        }

    def resolve(self, key: Path | int | str) -> Path:
        """A path by index, name or label (as :meth:`stitchkit.pool.pool.Pool.path`), or any valid path object."""
        if isinstance(key, Path):
            try:
                key.validate([r["depth"] for r in self.desc["rows"]], self.stitch_specs)
            except (ConfigError, PathError) as exc:
                raise PathError(f"{self.path}: {exc}") from None
            return key
        return _find_path(self.paths, key)


def read_pool_metadata(path: PathLike) -> dict[str, Any]:
    """The checked metadata of a pool file, from its header alone (no tensor is read).

    Returns ``{"format", "format_version", "writer", "pool", "tensors"}``:
    ``pool`` is the description written by :func:`save_pool` (method, rows,
    stitches, paths, info, evaluation, extras), ``tensors`` maps each tensor
    name to its dtype and shape. Needs no plugin: the architecture check
    against the adapters happens when tensors are loaded.
    """
    return PoolHeader(path).metadata_summary()
