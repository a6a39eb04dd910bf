"""The pool file format: one safetensors file per pool, read lazily per descendant.

Why safetensors: loading never unpickles (a pool file from a stranger cannot
run code), and its JSON header says where every tensor lies, so a descendant
reads only its own bytes. stitchkit checks the header itself before
safetensors sees the file, so every kind of damage surfaces as one documented
error, :class:`~stitchkit.errors.PoolFormatError`, naming the file and the
problem. The byte layout, the metadata schema and the versioning policy are
specified in ``docs/format.md``; the schemas below are the ones printed there.
"""

from __future__ import annotations

import hashlib
import contextlib
import json
import math
import re
import os
import pathlib
import shutil
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .files import atomic_write, open_regular, refuse_overwrite
from . import limits
from .errors import ConfigError, FileError, LimitError, PathError, PoolFormatError, StitchkitError, UnknownComponentError
from .pool import Pool
from .spec import Path, RowShape, StitchSpec, find_path
from .lowrank import merge_low_rank
from .stitched import Descendant, descendant_skeleton, pool_key_map

POOL_FORMAT = "stitchkit-pool"
DESCENDANT_FORMAT = "stitchkit-descendant"
FORMAT_VERSION = "1"
#: format_version values this reader understands.
SUPPORTED_VERSIONS = ("1",)
#: The same limit safetensors itself enforces on the JSON header.
MAX_HEADER_BYTES = 100_000_000

PathLike = str | os.PathLike
OnRead = Callable[[str], None]

#: Every dtype the format allows: safetensors name -> bytes per element.
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
# safetensors dtype name -> torch dtype (those this torch build has)
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in [
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"),
        ("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"), ("U8", "uint8"), ("BOOL", "bool"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
    ]
    if hasattr(torch, attr)
}
_DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def _writer() -> str:
    try:
        return f"stitchkit {version('stitchkit')}"
    except PackageNotFoundError:  # pragma: no cover - source tree without metadata
        return "stitchkit"


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
    "heads": _POSITIVE,
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


def _check_schema(value: Any, schema: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`_SchemaError` where ``value`` breaks ``schema`` (the subset above)."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[t](value) for t in types):
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
        if "items" in schema:
            for i, item in enumerate(value):
                _check_schema(item, schema["items"], f"{where}[{i}]")
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
            "(stitchkit.limits.MAX_JSON_CONTAINERS); not a file stitchkit wrote"
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
def _check_metadata(h: _Header, fmt: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Check format and version, parse the description and the tensor index, match them to the header."""
    p, meta = h.path, h.metadata or {}
    found = meta.get("format")
    if found != fmt:
        if found in (POOL_FORMAT, DESCENDANT_FORMAT):
            hint = "use load_pool / load_descendant" if found == POOL_FORMAT else "use load_exported"
            raise PoolFormatError(p, f"is a {found} file, not a {fmt} file; {hint}")
        what = "no 'format' key in __metadata__" if found is None else f"its format is {found!r}"
        raise PoolFormatError(
            p, f"a safetensors file that stitchkit did not write as a {fmt} ({what}); "
            "plain model weights load with TimmViT.load_checkpoint"
        )
    ver = meta.get("format_version")
    if ver is None:
        raise PoolFormatError(p, "missing format_version in __metadata__")
    if ver not in SUPPORTED_VERSIONS:
        raise PoolFormatError(
            p, f"format_version {ver!r} is not supported by this stitchkit (it reads {', '.join(SUPPORTED_VERSIONS)}); "
            "upgrade stitchkit to read it"
        )
    key, schema = ("pool", POOL_SCHEMA) if fmt == POOL_FORMAT else ("descendant", DESCENDANT_SCHEMA)
    desc = _parse_json(p, meta, key, schema)
    index = _parse_json(p, meta, "tensors", TENSORS_SCHEMA)
    _match_index(p, index, {n: (e["dtype"], e["shape"]) for n, e in h.entries.items()}, "the file", "the metadata")
    _check_bounds(p, desc, index, fmt)
    return desc, index


def _check_bounds(p: pathlib.Path, desc: Mapping[str, Any], index: Mapping[str, Any], fmt: str) -> None:
    """Bound before you build: sizes within :mod:`stitchkit.limits`, and as many blocks declared as the file holds.

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


def _parse_json(p: pathlib.Path, meta: Mapping[str, str], key: str, schema: Mapping[str, Any]) -> Any:
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
            raise PoolFormatError(p, f"metadata {key!r} lists {len(items):,} {field}, above the limit of {limit:,} (stitchkit.limits)")
    try:
        _check_schema(value, schema)
    except _SchemaError as exc:
        raise PoolFormatError(p, f"metadata {key!r} fails the schema {exc}") from None
    return value


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
        shapes = [RowShape(r["depth"], r["width"], r["heads"]) for r in desc["rows"]]
        specs = {s["name"]: StitchSpec.from_json(s) for s in desc["stitches"]}
        paths = [Path.from_json(d) for d in desc["paths"]]
        for path in paths:
            path.validate([s.depth for s in shapes], specs)
    except (ConfigError, PathError) as exc:
        raise PoolFormatError(p, f"metadata describes an invalid pool: {exc}") from None
    if len(specs) != len(desc["stitches"]):
        raise PoolFormatError(p, "metadata lists a stitch layer name twice")
    for s in specs.values():
        for end, width in ((s.src, s.src_width), (s.dst, s.dst_width)):
            if end >= len(shapes) or shapes[end].width != width:
                raise PoolFormatError(p, f"stitch layer {s.name!r} expects width {width} at row {end}, which the rows do not have")
        tensors = [("weight", [s.dst_width, s.src_width]), ("bias", [s.dst_width])]
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
    return paths


# --------------------------------------------------------------------------- reading
def _adapter_class(p: pathlib.Path, registry: Any, name: str, where: str) -> type:
    try:
        return registry.get("ancestry", name)
    except (UnknownComponentError, StitchkitError) as exc:
        raise PoolFormatError(
            p, f"{where} uses ancestry adapter {name!r}, which this installation cannot provide ({exc}); "
            "install the plugin that registers it"
        ) from exc


class _TooManyTensors(Exception):
    pass


@contextlib.contextmanager
def _at_most(n: int) -> Iterator[None]:
    """Abort a module build once it has registered more than ``n`` parameters and buffers.

    Building costs a few milliseconds per block even on the meta device, so a
    file-supplied arch is only built as far as the file's own tensors justify:
    a crafted header cannot buy more construction than it lists tensors.
    """
    count = 0

    def hook(_module: torch.nn.Module, _name: str, value: Any) -> None:
        nonlocal count
        count += 1
        if count > n:
            raise _TooManyTensors(n)

    from torch.nn.modules import module as _m

    handles = [_m.register_module_parameter_registration_hook(hook), _m.register_module_buffer_registration_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _build_row(
    p: pathlib.Path, cls: Any, arch: Mapping[str, Any], shape: RowShape | None, where: str, max_tensors: int | None = None
) -> Any:
    """An adapter built on the meta device from a file-supplied arch (no weights, no memory).

    ``max_tensors``: how many state-dict tensors the file holds for this row;
    the build stops at twice that (non-persistent buffers are registered too).
    """
    limit = 2 * max_tensors + 64 if max_tensors is not None else 1 << 62
    try:
        with torch.device("meta"), _at_most(limit):
            adapter = cls.from_arch(arch)
        built = adapter.shape
    except _TooManyTensors:
        raise PoolFormatError(
            p, f"{where}: its arch builds far more tensors than the file holds for it ({max_tensors}); "
            "the metadata does not describe this file"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to build a file-supplied arch is a file problem
        raise PoolFormatError(p, f"{where}: adapter {cls.name!r} cannot build arch {dict(arch)}: {exc}") from exc
    if shape is not None and built != shape:
        raise PoolFormatError(p, f"{where}: its arch builds a {built} row but the metadata says {shape}")
    return adapter


class _PoolFile:
    """A pool file whose header, metadata and tensor names/shapes have all been checked."""

    def __init__(self, path: PathLike) -> None:
        self.header = _read_header(path)
        self.path = self.header.path
        self.desc, self.index = _check_metadata(self.header, POOL_FORMAT)
        self.paths = _check_pool_description(self.path, self.desc, self.index)

    def skeleton(self, registry: Any) -> Pool:
        """The pool on the meta device, its tensor names and shapes matched to the file's."""
        from .registry import default_registry

        registry = registry if registry is not None else default_registry()
        p, desc = self.path, self.desc
        adapters = []
        for r, row in enumerate(desc["rows"]):
            cls = _adapter_class(p, registry, row["adapter"], f"row {r}")
            held = sum(1 for n in self.index if n.startswith(f"rows.{r}."))
            adapters.append(_build_row(p, cls, row["arch"], RowShape(row["depth"], row["width"], row["heads"]), f"row {r}", held))
        try:
            with torch.device("meta"):
                pool = Pool(
                    adapters, [StitchSpec.from_json(s) for s in desc["stitches"]], self.paths,
                    method=desc["method"], info=desc["info"],
                )
        except (ConfigError, PathError) as exc:
            raise PoolFormatError(p, f"metadata describes an invalid pool: {exc}") from None
        pool.evaluation = {k: dict(v) for k, v in desc["evaluation"].items()}
        expected = {n: (None, list(t.shape)) for n, t in pool.state_dict().items()}
        expected.update({n: (None, e["shape"]) for n, e in self.index.items() if n.startswith("extras.")})
        _match_index(p, self.index, expected, "the rows' architectures", "the file")
        _check_float(p, self.index, pool.state_dict())
        return pool

    def read(self, names: Iterable[str], device: str, on_read: OnRead | None) -> dict[str, torch.Tensor]:
        return _read_tensors(self.path, names, device, on_read)


def _check_float(p: pathlib.Path, index: Mapping[str, Mapping[str, Any]], expected: Mapping[str, torch.Tensor]) -> None:
    """Floating-point weights must be stored as one floating-point dtype (a mixed pool cannot run)."""
    floats = [name for name, t in expected.items() if t.is_floating_point()]
    for name in floats:
        if index[name]["dtype"] not in _FLOAT_DTYPES:
            raise PoolFormatError(p, f"tensor {name!r} is stored as {index[name]['dtype']}, but it is a floating-point weight")
    counts = Counter(index[name]["dtype"] for name in floats)
    if len(counts) > 1:
        main = counts.most_common(1)[0][0]
        odd = next(name for name in floats if index[name]["dtype"] != main)
        raise PoolFormatError(p, f"tensor {odd!r} is stored as {index[odd]['dtype']} but the other weights as {main}")


def _read_tensors(p: pathlib.Path, names: Iterable[str], device: str, on_read: OnRead | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device=device) as f:
            for name in names:
                out[name] = f.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise PoolFormatError(p, f"safetensors could not read the tensors: {exc}") from exc
    if on_read is not None:
        for name in out:
            on_read(name)
    return out


def _load_into(p: pathlib.Path, module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # only reachable if an adapter's modules disagree with its own state dict
        raise PoolFormatError(p, f"tensors do not fit the rebuilt modules: {exc}") from exc
    # A tensor outside the state dict (a non-persistent buffer) would stay on the meta device and
    # fail later, far from here: say now which adapter needs to change.
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if left:
        raise StitchkitError(
            f"{p}: {_few(left)} are not in the state dict, so they cannot be restored from the file; "
            "the ancestry adapter must keep such tensors persistent (register_buffer(..., persistent=True)) "
            "or compute them in forward"
        )


def read_pool_metadata(path: PathLike) -> dict[str, Any]:
    """The checked metadata of a pool file, from its header alone (no tensor is read).

    Returns ``{"format", "format_version", "writer", "pool", "tensors"}``:
    ``pool`` is the description written by :func:`save_pool` (method, rows,
    stitches, paths, info, evaluation, extras), ``tensors`` maps each tensor
    name to its dtype and shape. Needs no plugin: the architecture check
    against the adapters happens when tensors are loaded.
    """
    f = _PoolFile(path)
    meta = f.header.metadata or {}
    return {
        "format": meta["format"],
        "format_version": meta["format_version"],
        "writer": meta.get("writer", ""),
        "pool": f.desc,
        "tensors": f.index,
    }


def read_pool_structure(path: PathLike, registry: Any = None) -> tuple[dict[str, Any], Pool]:
    """The checked metadata (as :func:`read_pool_metadata`) and the pool on the meta device.

    Every row is rebuilt from its arch (within :mod:`stitchkit.limits`) and its
    tensor names and shapes matched to the file's, so the structure is exactly
    what :func:`load_pool` would load; no tensor is read. ``info`` and
    ``select`` count params and MACs on it.
    """
    f = _PoolFile(path)
    meta = f.header.metadata or {}
    return {
        "format": meta["format"],
        "format_version": meta["format_version"],
        "writer": meta.get("writer", ""),
        "pool": f.desc,
        "tensors": f.index,
    }, f.skeleton(registry)


def load_pool(path: PathLike, registry: Any = None, *, device: str | torch.device = "cpu", verify: bool = False) -> Pool:
    """Rebuild a pool, bit-exact: rows from their adapters' archs, then the stored tensors.

    Rows are built on the meta device (no random init, no memory) and take the
    file's tensors by assignment, so dtypes are kept as stored. ``verify=True``
    first checks the data section against its stored sha256 (:func:`verify_data`).
    """
    f = _PoolFile(path)
    if verify:
        verify_data(f.path)
    pool = f.skeleton(registry)
    state = f.read(f.index, str(device), None)
    extras = {n[len("extras."):]: state.pop(n) for n in list(state) if n.startswith("extras.")}
    _load_into(f.path, pool, state)
    pool.extras = {name: extras[name] for name in f.desc["extras"]}
    return pool


def load_descendant(
    path: PathLike,
    key: Path | int | str,
    registry: Any = None,
    *,
    device: str | torch.device = "cpu",
    on_read: OnRead | None = None,
) -> Descendant:
    """One descendant from a pool file, reading only its own tensors.

    ``key`` is a path, its index in the pool's path list, its name
    (``r0[0:2]+s0_1_2+r1[2:3]``) or its label. ``on_read(name)`` is called for
    every pool tensor read, so callers can see that nothing else was touched.
    """
    f = _PoolFile(path)
    pool = f.skeleton(registry)
    target = pool.path(key)
    return _lazy_descendant(f, pool, target, str(device), on_read)


def _lazy_descendant(f: _PoolFile, pool: Pool, target: Path, device: str, on_read: OnRead | None) -> Descendant:
    rows = sorted({s.row for s in target.segments})
    mapping = pool_key_map(
        {r: pool.adapters[r].part_of for r in rows},
        {r: list(pool.rows[r].state_dict()) for r in rows},
        target,
        {n: list(pool.stitches[n].state_dict()) for n in target.stitches},
    )
    desc_rows = f.desc["rows"]
    skeleton = descendant_skeleton(
        {r: type(pool.adapters[r]) for r in rows},
        {r: desc_rows[r]["arch"] for r in rows},
        pool.stitch_specs,
        target,
    )
    wanted = set(skeleton.state_dict())
    if set(mapping.values()) != wanted:
        raise PoolFormatError(
            f.path, f"descendant {target.name}: the pool's tensor names do not cover its modules "
            f"(unmapped: {_few(sorted(wanted - set(mapping.values())))})"
        )
    tensors = f.read(mapping, device, on_read)
    _load_into(f.path, skeleton, {mapping[n]: t for n, t in tensors.items()})
    return merge_low_rank(skeleton)  # type: ignore[return-value]


# --------------------------------------------------------------------------- writing
def _prepare(p: pathlib.Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no storage shared between two names
    (safetensors refuses shared tensors; each name gets its own bytes)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise PoolFormatError(p, f"cannot write {name!r}: it is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta":
            raise PoolFormatError(p, f"cannot write {name!r}: it is on the meta device (no weights); load weights first")
        if t.dtype not in _DTYPE_NAMES:
            raise PoolFormatError(p, f"cannot write {name!r}: dtype {t.dtype} has no safetensors equivalent")
        t = t.detach().to("cpu").contiguous()
        storage = (t.device.type, t.untyped_storage().data_ptr())
        if storage in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.device.type, t.untyped_storage().data_ptr()))
        out[name] = t
    return out


def _atomic_write(p: pathlib.Path, write: Callable[[str], None]) -> None:
    """Write through :func:`stitchkit.files.atomic_write`: ``p`` is never half-written."""
    atomic_write(p, write)


def _encode(p: pathlib.Path, key: str, value: Any, schema: Mapping[str, Any]) -> str:
    try:
        _check_schema(value, schema)
        return _dumps(value)
    except _SchemaError as exc:
        raise PoolFormatError(p, f"cannot write: the {key} description fails the schema {exc}") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise PoolFormatError(p, f"cannot write: the {key} description is not plain JSON ({exc})") from None


def _index(prepared: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {n: {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for n, t in prepared.items()}


def _write(
    p: pathlib.Path, fmt: str, key: str, desc: Any, schema: Mapping[str, Any], prepared: Mapping[str, torch.Tensor]
) -> pathlib.Path:
    metadata = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "writer": _writer(),
        key: _encode(p, key, desc, schema),
        "tensors": _dumps(_index(prepared)),
    }
    _save(p, prepared, metadata)
    return p


def _raw(t: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, little-endian as safetensors stores them."""
    return t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else memoryview(b"")


def _save(p: pathlib.Path, prepared: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file whose ``__metadata__`` carries ``data_sha256``, the sha256 of its data section.

    The layout is safetensors' own (tensors sorted by element size, largest
    first, then by name, so every tensor is aligned; header padded to 8 bytes);
    writing it here lets the checksum of the data go into the header.
    """
    order = sorted(prepared, key=lambda n: (-prepared[n].element_size(), n))
    digest = hashlib.sha256()
    header: dict[str, Any] = {}
    offset = 0
    for name in order:
        t = prepared[name]
        raw = _raw(t)
        digest.update(raw)
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + raw.nbytes]}
        offset += raw.nbytes
    text = _dumps({"__metadata__": {**metadata, "data_sha256": digest.hexdigest()}, **header}).encode("utf-8")
    text += b" " * (-len(text) % 8)

    def write(tmp: str) -> None:
        with open(tmp, "xb") as fh:
            fh.write(struct.pack("<Q", len(text)))
            fh.write(text)
            for name in order:
                fh.write(_raw(prepared[name]))

    _atomic_write(p, write)


def verify_data(path: PathLike) -> str:
    """Check a pool or descendant file's data section against the sha256 stored at write time; return it.

    Raises :class:`PoolFormatError` if the bytes differ (a flipped weight bit
    passes every structural check, but not this one) or no checksum is stored.
    """
    h = _read_header(path)
    stored = (h.metadata or {}).get("data_sha256")
    if stored is None:
        raise PoolFormatError(h.path, "no data_sha256 in __metadata__ to verify against (written by an older stitchkit or another tool)")
    digest = hashlib.sha256()
    try:
        with open(open_regular(h.path, "pool file"), "rb") as fh:
            fh.seek(h.data_start)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, FileError) as exc:
        raise PoolFormatError(h.path, f"cannot read the file: {exc}") from None
    if digest.hexdigest() != stored:
        raise PoolFormatError(
            h.path, f"the tensor data does not match the checksum stored when the file was written "
            f"(sha256 {digest.hexdigest()[:16]}... vs {stored[:16]}...): the weights are damaged; restore the file"
        )
    return stored


def save_pool(pool: Pool, path: PathLike, *, provenance: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write ``pool`` as one safetensors file, atomically.

    Tensors keep the pool's state-dict names (``rows.<r>.<row key>``,
    ``stitches.<name>.weight|bias``) plus ``extras.<name>``; ``provenance``
    (any JSON object: where the ancestry and data came from) is stored as
    ``info.provenance``.
    """
    p = pathlib.Path(path)
    desc = pool.describe()
    if provenance is not None:
        desc["info"] = {**desc["info"], "provenance": dict(provenance)}
    tensors = dict(pool.state_dict())
    tensors.update({f"extras.{name}": t for name, t in pool.extras.items()})
    prepared = _prepare(p, tensors)
    _encode(p, "pool", desc, POOL_SCHEMA)
    try:  # the same checks a reader makes, so a bad pool fails here, not at load time
        _check_pool_description(p, desc, _index(prepared))
    except PoolFormatError as exc:
        raise PoolFormatError(p, f"cannot write: {exc.problem}") from None
    return _write(p, POOL_FORMAT, "pool", desc, POOL_SCHEMA, prepared)


def update_evaluation(
    path: PathLike, results: Mapping[Path | int | str, Mapping[str, Any]], *, merge: bool = False
) -> dict[str, dict[str, Any]]:
    """Rewrite a pool file's evaluation metadata atomically; tensor bytes are copied unchanged.

    ``results`` maps a descendant (path, index, name or label) to a JSON object
    of results. ``merge=True`` keeps other descendants' stored results and
    updates the given ones; otherwise the stored evaluation is replaced.
    Returns the evaluation now stored, keyed by path name.
    """
    f = _PoolFile(path)
    p = f.path
    evaluation: dict[str, dict[str, Any]] = dict(f.desc["evaluation"]) if merge else {}
    for key, value in results.items():
        name = _find_path(f.paths, key).name
        if not isinstance(value, Mapping):
            raise PoolFormatError(p, f"cannot write: the results for {name} must be a dict, got {type(value).__name__}")
        evaluation[name] = {**evaluation.get(name, {}), **dict(value)} if merge else dict(value)
    desc = {**f.desc, "evaluation": evaluation}
    meta = {**(f.header.metadata or {}), "pool": _encode(p, "pool", desc, POOL_SCHEMA), "writer": _writer()}
    header = {"__metadata__": meta}
    header.update(sorted(f.header.entries.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    text = _dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header so tensor data starts 8-byte aligned

    def write(tmp: str) -> None:
        with open(p, "rb") as src, open(tmp, "xb") as dst:
            dst.write(struct.pack("<Q", len(text)))
            dst.write(text)
            src.seek(f.header.data_start)
            shutil.copyfileobj(src, dst, 1 << 20)

    _atomic_write(p, write)
    return evaluation


def _find_path(paths: list[Path], key: Path | int | str) -> Path:
    """The path for ``key`` (as :meth:`Pool.path` resolves it), from metadata alone."""
    return find_path(paths, key.name if isinstance(key, Path) else key)


# --------------------------------------------------------------------------- export
def _source(pool_or_path: Pool | PathLike, key: Path | int | str, registry: Any, device: str) -> tuple[dict[str, Any], Path, Callable[[], Descendant], Any]:
    """(pool description, path, descendant factory, file or pool) for an in-memory pool or a pool file."""
    if isinstance(pool_or_path, Pool):
        pool = pool_or_path
        target = pool.path(key)
        return pool.describe(), target, lambda: pool.descendant(target), pool
    f = _PoolFile(pool_or_path)
    pool = f.skeleton(registry)
    target = pool.path(key)
    return f.desc, target, lambda: _lazy_descendant(f, pool, target, device, None), f


def _refuse_input(out: pathlib.Path, pool_or_path: Pool | PathLike) -> None:
    """An export must never replace its own pool file (same name, symlink or hard link)."""
    refuse_overwrite(out, [] if isinstance(pool_or_path, Pool) else [pool_or_path], "export output")


def _descendant_description(desc: Mapping[str, Any], target: Path) -> dict[str, Any]:
    rows = sorted({s.row for s in target.segments})
    stitches = {s["name"]: s for s in desc["stitches"]}
    evaluation = desc["evaluation"].get(target.name)
    return {
        "name": target.name,
        "path": target.to_json(),
        "method": desc["method"],
        "rows": [{"row": r, **desc["rows"][r]} for r in rows],
        # exported stitch layers are merged: plain layers, whatever the pool's rank
        "stitches": [{k: v for k, v in stitches[n].items() if k not in ("rank", "alpha")} for n in target.stitches],
        "info": desc["info"],
        "evaluation": evaluation,
    }


def export_descendant(
    pool_or_path: Pool | PathLike, key: Path | int | str, out_path: PathLike, *, registry: Any = None
) -> pathlib.Path:
    """Write one descendant as a standalone file that :func:`load_exported` reads without the pool.

    From a pool file only the descendant's tensors are read. Tensor names are
    the descendant's own (``stem.*``, ``segments.<i>.<j>.*``, ``stitches.<i>.*``, ``head.*``).
    """
    out = pathlib.Path(out_path)
    _refuse_input(out, pool_or_path)
    desc, target, make, _ = _source(pool_or_path, key, registry, "cpu")
    prepared = _prepare(out, merge_low_rank(make()).state_dict())
    return _write(out, DESCENDANT_FORMAT, "descendant", _descendant_description(desc, target), DESCENDANT_SCHEMA, prepared)


def read_descendant_metadata(path: PathLike) -> dict[str, Any]:
    """The checked metadata of an exported descendant file (no tensor is read)."""
    h = _read_header(path)
    desc, index = _check_metadata(h, DESCENDANT_FORMAT)
    _descendant_parts(h.path, desc)
    meta = h.metadata or {}
    return {"format": meta["format"], "format_version": meta["format_version"], "writer": meta.get("writer", ""),
            "descendant": desc, "tensors": index}


def _descendant_parts(p: pathlib.Path, desc: Mapping[str, Any]) -> tuple[Path, dict[int, Mapping[str, Any]], dict[str, StitchSpec]]:
    rows: dict[int, Mapping[str, Any]] = {}
    for row in desc["rows"]:
        if row["row"] in rows:
            raise PoolFormatError(p, f"metadata lists row {row['row']} twice")
        rows[row["row"]] = row
    try:
        target = Path.from_json(desc["path"])
        specs = {s["name"]: StitchSpec.from_json(s) for s in desc["stitches"]}
        used = {s.row for s in target.segments}
        if used != set(rows):
            raise PathError(f"the path uses rows {sorted(used)} but the metadata describes rows {sorted(rows)}")
        if set(specs) != set(target.stitches) or len(specs) != len(desc["stitches"]):
            raise PathError(f"the path uses stitch layers {list(target.stitches)} but the metadata describes {sorted(specs)}")
        depths = [rows[r]["depth"] if r in rows else 0 for r in range(max(rows) + 1)]
        target.validate(depths, specs)
        for s in specs.values():
            for end, width in ((s.src, s.src_width), (s.dst, s.dst_width)):
                if rows[end]["width"] != width:
                    raise PathError(f"stitch layer {s.name!r} expects width {width} at row {end}, which has width {rows[end]['width']}")
    except (ConfigError, PathError) as exc:
        raise PoolFormatError(p, f"metadata describes an invalid descendant: {exc}") from None
    if desc["name"] != target.name:
        raise PoolFormatError(p, f"metadata names the descendant {desc['name']!r} but its path is {target.name!r}")
    return target, rows, specs


def load_exported(path: PathLike, registry: Any = None, *, device: str | torch.device = "cpu", verify: bool = False) -> Descendant:
    """Load a file written by :func:`export_descendant`; no pool needed (``verify``: as in :func:`load_pool`)."""
    from .registry import default_registry

    registry = registry if registry is not None else default_registry()
    h = _read_header(path)
    p = h.path
    desc, index = _check_metadata(h, DESCENDANT_FORMAT)
    if verify:
        verify_data(p)
    target, rows, specs = _descendant_parts(p, desc)
    types = {}
    for r, row in rows.items():
        types[r] = _adapter_class(p, registry, row["adapter"], f"row {r}")
        used = sum(s.stop - s.start for s in target.segments if s.row == r)
        held = len(index) * -(-row["depth"] // max(used, 1))  # the file holds `used` of the row's blocks
        _build_row(p, types[r], row["arch"], RowShape(row["depth"], row["width"], row["heads"]), f"row {r}", held)
    try:
        skeleton = descendant_skeleton(types, {r: row["arch"] for r, row in rows.items()}, specs, target)
    except Exception as exc:  # noqa: BLE001 - same reasoning as _build_row
        raise PoolFormatError(p, f"cannot rebuild descendant {target.name}: {exc}") from exc
    state = skeleton.state_dict()
    _match_index(p, index, {n: (None, list(t.shape)) for n, t in state.items()}, "the descendant's architecture", "the file")
    _check_float(p, index, state)
    _load_into(p, skeleton, _read_tensors(p, index, str(device), None))
    return skeleton


def export_timm_state_dict(
    pool_or_path: Pool | PathLike, key: Path | int | str, out_path: PathLike, *, registry: Any = None
) -> dict[str, Any]:
    """Write a single-row descendant as the row model's own state dict (safetensors).

    For the ``timm-vit`` adapter these are plain timm ``VisionTransformer``
    keys (``patch_embed.*``, ``blocks.<i>.*``, ``norm.*``, ``head.*``), loadable
    by ``VisionTransformer(**arch).load_state_dict`` or
    ``TimmViT.load_checkpoint``. Returns the row's arch (the model's kwargs,
    also stored in the metadata as ``stitchkit_arch``).
    """
    out = pathlib.Path(out_path)
    _refuse_input(out, pool_or_path)
    desc, target, _, source = _source(pool_or_path, key, registry, "cpu")
    if not target.is_single_row:
        raise PathError(
            f"descendant {target.name} is stitched from rows {list(target.rows)}: only a single-row descendant "
            "is a plain model; export stitched ones with export_descendant (on the command line: without --timm)"
        )
    r = target.rows[0]
    if isinstance(source, Pool):
        tensors = dict(source.rows[r].state_dict())
    else:
        prefix = f"rows.{r}."
        read = source.read([n for n in source.index if n.startswith(prefix)], "cpu", None)
        tensors = {n[len(prefix):]: t for n, t in read.items()}
    row = desc["rows"][r]
    extra = {
        "stitchkit_adapter": row["adapter"],
        "stitchkit_arch": _dumps(row["arch"]),
        "stitchkit_descendant": _encode(out, "descendant", _descendant_description(desc, target), DESCENDANT_SCHEMA),
    }
    prepared = _prepare(out, tensors)
    metadata = {"format": "pt", **extra}
    _save(out, prepared, metadata)
    return dict(row["arch"])
