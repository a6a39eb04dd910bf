"""The pool file format: one safetensors file per pool, read lazily per descendant.

Why safetensors: loading never unpickles (a pool file from a stranger cannot
run code), and its JSON header says where every tensor lies, so a descendant
reads only its own bytes. stitchkit checks the header itself before
safetensors sees the file, so every kind of damage surfaces as one documented
error, :class:`~stitchkit.core.errors.PoolFormatError`, naming the file and the
problem. The byte layout, the metadata schema and the versioning policy are
specified in ``docs/format.md``. Reading and checking the header and metadata
needs no torch and lives in :mod:`stitchkit.io.header`; this module builds
modules and reads and writes tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..core import limits
from ..core.errors import ConfigError, FileError, LimitError, PathError, PoolFormatError, StitchkitError, UnknownComponentError
from .files import atomic_write, file_sha256, refuse_overwrite
from ..pool.lowrank import merge_low_rank
from .header import (  # noqa: F401 - re-exported: the format's constants and schemas are part of this module's API
    DESCENDANT_FORMAT,
    DESCENDANT_SCHEMA,
    DTYPE_SIZES,
    FORMAT_VERSION,
    KIND_KEY,
    MAX_HEADER_BYTES,
    PLAIN_FORMAT,
    PATH_SCHEMA,
    POOL_FORMAT,
    POOL_SCHEMA,
    STITCH_SCHEMA,
    SUPPORTED_VERSIONS,
    SIZES_SCHEMA,
    TENSORS_SCHEMA,
    PathLike,
    _FLOAT_DTYPES,
    _check_metadata,
    _check_version,
    _parse_json,
    file_kind,
    _check_pool_description,
    _check_schema,
    _dumps,
    _few,
    _find_path,
    _Header,
    _match_index,
    _read_header,
    _SchemaError,
    PoolHeader,
    read_pool_metadata,
    stamp,
)
from ..core.registry import default_registry
from ..pool.pool import Pool
from .preprocessing import attach
from ..pool.sizes import pool_sizes
from ..pool.metainit import meta_skeleton
from ..core.spec import Path, RowShape, StitchSpec
from ..pool.stitched import Descendant, build_descendant, descendant_skeleton

OnRead = Callable[[str], None]

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


def _writer() -> str:
    try:
        return f"stitchkit {version('stitchkit')}"
    except PackageNotFoundError:  # pragma: no cover - source tree without metadata
        return "stitchkit"


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
        with meta_skeleton(), _at_most(limit):
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


class _PoolFile(PoolHeader):
    """A checked pool file (:class:`~stitchkit.io.header.PoolHeader`) that can build modules and read tensors."""

    def skeleton(self, registry: Any) -> Pool:
        """The pool on the meta device, its tensor names and shapes matched to the file's."""
        registry = registry if registry is not None else default_registry()
        p, desc = self.path, self.desc
        adapters = []
        for r, row in enumerate(desc["rows"]):
            cls = _adapter_class(p, registry, row["adapter"], f"row {r}")
            held = sum(1 for n in self.index if n.startswith(f"rows.{r}."))
            adapters.append(_build_row(p, cls, row["arch"], RowShape.from_json(dict(row)), f"row {r}", held))
        try:
            with meta_skeleton():
                pool = Pool(
                    adapters, [StitchSpec.from_json(s) for s in desc["stitches"]], self.paths,
                    method=desc["method"], info=desc["info"],
                    stitched_final_norm=desc.get("stitched_final_norm", True),
                )
        except (ConfigError, PathError) as exc:
            raise PoolFormatError(p, f"metadata describes an invalid pool: {exc}") from None
        pool.evaluation = {k: dict(v) for k, v in desc["evaluation"].items()}
        expected = {n: (None, list(t.shape)) for n, t in pool.state_dict().items()}
        expected.update({n: (None, e["shape"]) for n, e in self.index.items() if n.startswith("extras.")})
        _match_index(p, self.index, expected, "the rows' architectures", "the file")
        _check_float(p, self.index, pool.state_dict())
        return pool

    def read(self, names: Iterable[str], device: str, on_read: OnRead | None, mmap: bool = False) -> dict[str, torch.Tensor]:
        return _read_tensors(self.path, names, device, on_read, mmap)


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


def _read_tensors(
    p: pathlib.Path, names: Iterable[str], device: str, on_read: OnRead | None, mmap: bool = False
) -> dict[str, torch.Tensor]:
    """The named tensors. safetensors maps the file: a CPU tensor it returns reads its pages on first
    use and shows whatever the file holds then, so unless ``mmap`` each is copied into memory of its own
    (a file rewritten in place later, e.g. by ``cp``, must not change a loaded pool's weights)."""
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device=device) as f:
            for name in names:
                t = f.get_tensor(name)
                out[name] = t if mmap or t.device.type != "cpu" else t.clone()
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
    # Non-persistent buffers are recomputed as the adapters say; one still on the meta device
    # would fail later, far from here: say now which adapter needs to change.
    if isinstance(module, Descendant):
        module.restore_buffers()
    elif isinstance(module, Pool):
        for adapter in module.adapters:
            adapter.restore_buffers(adapter.model)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if left:
        raise StitchkitError(
            f"{p}: {_few(left)} are not in the state dict, so they cannot be restored from the file; "
            "the ancestry adapter must keep such tensors persistent (register_buffer(..., persistent=True)), "
            "compute them in forward, or recompute them in AncestryAdapter.restore_buffers"
        )


def read_pool_structure(path: PathLike, registry: Any = None) -> tuple[dict[str, Any], Pool]:
    """The checked metadata (as :func:`read_pool_metadata`) and the pool on the meta device.

    Every row is rebuilt from its arch (within :mod:`stitchkit.core.limits`) and its
    tensor names and shapes matched to the file's, so the structure is exactly
    what :func:`load_pool` would load; no tensor is read. ``info`` and
    ``select`` count params and MACs on it.
    """
    f = _PoolFile(path)
    return f.metadata_summary(), f.skeleton(registry)


def load_pool(
    path: PathLike, registry: Any = None, *, device: str | torch.device = "cpu", verify: bool = False, mmap: bool = False
) -> Pool:
    """Rebuild a pool, bit-exact: rows from their adapters' archs, then the stored tensors.

    Rows are built on the meta device (no random init, no memory) and take the
    file's tensors by assignment, so dtypes are kept as stored. ``verify=True``
    first checks the data section against its stored sha256 (:func:`verify_data`).

    The weights are read into the process's own memory. ``mmap=True`` (CPU only) leaves them
    mapped from the file instead: the load returns sooner, pages are read on first use and shared
    with other processes mapping the file, but the file must then not be rewritten in place while
    the pool is in use (that changes its weights; stitchkit's own writers replace files atomically).
    """
    f = _PoolFile(path)
    if verify:
        verify_data(f.path)
    pool = f.skeleton(registry)
    state = f.read(f.index, str(device), None, mmap)
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
    mmap: bool = False,
) -> Descendant:
    """One descendant from a pool file, reading only its own tensors.

    ``key`` is a path, its index in the pool's path list, its name
    (``r0[0:2]+s0_1_2+r1[2:3]``) or its label. ``on_read(name)`` is called for
    every pool tensor read, so callers can see that nothing else was touched.
    ``mmap``: as in :func:`load_pool`.
    """
    f = _PoolFile(path)
    return _lazy_descendant(f, f.resolve(key), registry, str(device), on_read, mmap)


def _lazy_descendant(
    f: _PoolFile, target: Path, registry: Any, device: str, on_read: OnRead | None, mmap: bool = False
) -> Descendant:
    """Build only the rows the descendant uses (on the meta device), then read only its tensors."""
    registry = registry if registry is not None else default_registry()
    p, desc_rows = f.path, f.desc["rows"]
    rows = sorted({s.row for s in target.segments})
    types = {r: _adapter_class(p, registry, desc_rows[r]["adapter"], f"row {r}") for r in rows}

    def build_row(r: int, cls: type, arch: dict[str, Any]) -> Any:
        """The row on the meta device, checked against the shape the metadata gives it."""
        held = sum(1 for n in f.index if n.startswith(f"rows.{r}."))
        return _build_row(p, cls, arch, RowShape.from_json(dict(desc_rows[r])), f"row {r}", held)

    mapping: dict[str, str] = {}
    skeleton = descendant_skeleton(
        types, {r: desc_rows[r]["arch"] for r in rows}, f.stitch_specs, target, pool_keys=mapping, build_row=build_row,
        stitched_final_norm=f.desc.get("stitched_final_norm", True),
    )
    state = skeleton.state_dict()
    if set(mapping.values()) != set(state):
        raise PoolFormatError(
            p, f"descendant {target.name}: the pool's tensor names do not cover its modules "
            f"(unmapped: {_few(sorted(set(state) - set(mapping.values())))})"
        )
    by_pool_name = {n: state[own] for n, own in mapping.items()}
    missing = sorted(set(mapping) - set(f.index))
    if missing:
        raise PoolFormatError(p, f"descendant {target.name} needs {len(missing)} tensor(s) the file lacks: {_few(missing)}")
    _match_index(p, {n: f.index[n] for n in mapping}, {n: (None, list(t.shape)) for n, t in by_pool_name.items()},
                 "the rows' architectures", "the file")
    _check_float(p, f.index, by_pool_name)
    tensors = f.read(mapping, device, on_read, mmap)
    _load_into(p, skeleton, {mapping[n]: t for n, t in tensors.items()})
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
    """Write through :func:`stitchkit.io.files.atomic_write`: ``p`` is never half-written."""
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
        KIND_KEY: fmt,
        "format_version": FORMAT_VERSION,
        "writer": _writer(),
        key: _encode(p, key, desc, schema),
        "tensors": _dumps(_index(prepared)),
    }
    if _same_file(p, metadata, prepared):  # a rerun that changed nothing leaves the file (and its mtime) alone
        return p
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
    meta = stamp({**metadata, "data_sha256": digest.hexdigest()})  # format: pt, and the digest over all of it
    text = _dumps({"__metadata__": meta, **header}).encode("utf-8")
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
    found = _data_sha256(h.path, h.data_start)
    if found != stored:
        raise PoolFormatError(
            h.path, f"the tensor data does not match the checksum stored when the file was written "
            f"(sha256 {found[:16]}... vs {stored[:16]}...): the weights are damaged; restore the file"
        )
    return stored


def _data_sha256(p: pathlib.Path, start: int) -> str:
    """The sha256 of a file's bytes from ``start`` (its data section) to the end."""
    try:
        return file_sha256(p, "pool file", start)
    except (OSError, FileError) as exc:
        raise PoolFormatError(p, f"cannot read the file: {exc}") from None


def _same_file(p: pathlib.Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> bool:
    """True if ``p`` already holds exactly this metadata and these tensors (compared one tensor at a time)."""
    if not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as fh:
            kept = {k: v for k, v in (fh.metadata() or {}).items() if k not in ("data_sha256", "metadata_sha256", "format")}
            if kept != dict(metadata) or set(fh.keys()) != set(tensors):
                return False
            return all(torch.equal(fh.get_tensor(k), t) for k, t in tensors.items())
    except Exception:  # noqa: BLE001 - unreadable or truncated: rewrite it
        return False


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
    with torch.no_grad():
        desc["sizes"] = pool_sizes(pool)  # so that 'stitchkit info' needs no torch
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
    # rewritten in today's format (a v1/v2 file is upgraded: its data checksum, if any, stays valid)
    old = f.header.metadata or {}
    meta = {**old, KIND_KEY: POOL_FORMAT, "format_version": FORMAT_VERSION,
            "pool": _encode(p, "pool", desc, POOL_SCHEMA), "writer": _writer()}
    if "data_sha256" not in meta:
        meta["data_sha256"] = _data_sha256(p, f.header.data_start)
    header = {"__metadata__": stamp(meta)}
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


# --------------------------------------------------------------------------- export
def _source(pool_or_path: Pool | PathLike, key: Path | int | str, registry: Any, device: str) -> tuple[dict[str, Any], Path, Callable[[], Descendant], Any]:
    """(pool description, path, descendant factory, file or pool) for an in-memory pool or a pool file."""
    if isinstance(pool_or_path, Pool):
        pool = pool_or_path
        target = pool.path(key)
        # a fresh module, not the pool's cached one: exporting merges low-rank stitch layers in place
        return pool.describe(), target, lambda: build_descendant(pool.adapters, pool.stitches, target), pool
    f = _PoolFile(pool_or_path)
    target = f.resolve(key)
    return f.desc, target, lambda: _lazy_descendant(f, target, registry, device, None), f


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
        "stitched_final_norm": desc.get("stitched_final_norm", True),
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
    return {"format": DESCENDANT_FORMAT, "format_version": meta["format_version"], "writer": meta.get("writer", ""),
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
    except (ConfigError, PathError) as exc:
        raise PoolFormatError(p, f"metadata describes an invalid descendant: {exc}") from None
    if desc["name"] != target.name:
        raise PoolFormatError(p, f"metadata names the descendant {desc['name']!r} but its path is {target.name!r}")
    return target, rows, specs


def load_exported(
    path: PathLike, registry: Any = None, *, device: str | torch.device = "cpu", verify: bool = False, mmap: bool = False
) -> Descendant:
    """Load a file written by :func:`export_descendant`, or an export folder (``stitchkit export --hf``); no pool needed.

    A folder's ``model.safetensors`` is a descendant file, or for a single-row
    descendant the row's plain timm weights (which timm loads too); both load here.
    The model is in eval mode and carries what inference needs: ``transform``
    (timm's evaluation transform for an image file), ``classes`` (names in label
    order), ``preprocessing`` (timm's data config, also as ``pretrained_cfg``);
    None for files exported from pools that did not record them. ``verify`` and
    ``mmap``: as in :func:`load_pool`.
    """
    from .hub import weights_in

    registry = registry if registry is not None else default_registry()
    try:
        h = _read_header(weights_in(path))
    except FileError as exc:
        raise PoolFormatError(pathlib.Path(path), str(exc).removeprefix(f"{path}: ")) from None
    p = h.path
    if file_kind(h.metadata or {}) == PLAIN_FORMAT:
        return _load_plain(h, registry, str(device), verify, mmap)
    desc, index = _check_metadata(h, DESCENDANT_FORMAT)
    if verify:
        verify_data(p)
    target, rows, specs = _descendant_parts(p, desc)
    types = {}
    for r, row in rows.items():
        types[r] = _adapter_class(p, registry, row["adapter"], f"row {r}")
        used = sum(s.stop - s.start for s in target.segments if s.row == r)
        held = len(index) * -(-row["depth"] // max(used, 1))  # the file holds `used` of the row's blocks
        _build_row(p, types[r], row["arch"], RowShape.from_json(dict(row)), f"row {r}", held)
    try:
        skeleton = descendant_skeleton(
            types, {r: row["arch"] for r, row in rows.items()}, specs, target,
            stitched_final_norm=desc.get("stitched_final_norm", True),
        )
    except Exception as exc:  # noqa: BLE001 - same reasoning as _build_row
        raise PoolFormatError(p, f"cannot rebuild descendant {target.name}: {exc}") from exc
    state = skeleton.state_dict()
    _match_index(p, index, {n: (None, list(t.shape)) for n, t in state.items()}, "the descendant's architecture", "the file")
    _check_float(p, index, state)
    _load_into(p, skeleton, _read_tensors(p, index, str(device), None, mmap))
    # ready for inference: eval mode, with the transform and class names the pool was built with
    return _attach(p, skeleton.eval(), (desc.get("info") or {}).get("data"))


def _attach(p: pathlib.Path, model: Descendant, data: Any) -> Descendant:
    """:func:`~stitchkit.io.preprocessing.attach` the file's ``info.data``; a value timm cannot use is the file's fault."""
    try:
        return attach(model, data)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - file-supplied preprocessing and classes, as in _build_row
        raise PoolFormatError(
            p, f"metadata info.data (preprocessing, classes) cannot be used: {type(exc).__name__}: {exc}"
        ) from None


def _load_plain(h: _Header, registry: Any, device: str, verify: bool, mmap: bool) -> Descendant:
    """A single-row descendant from its plain-model file: the row's own keys, mapped to the descendant's."""
    p, meta = h.path, h.metadata or {}
    _check_version(p, meta)
    if verify:
        verify_data(p)
    desc = _parse_json(p, meta, "stitchkit_descendant", DESCENDANT_SCHEMA)
    target, rows, _ = _descendant_parts(p, desc)
    if not target.is_single_row:
        raise PoolFormatError(p, f"a plain-model file must hold a single-row descendant, but its path is {target.name}")
    (r, row), = rows.items()
    try:
        limits.check_row(row["depth"], row["width"], row["heads"], f"row {r}")
        limits.check_arch(row["arch"], f"row {r}")
    except LimitError as exc:
        raise PoolFormatError(p, f"metadata is out of bounds: {exc}") from None
    cls = _adapter_class(p, registry, row["adapter"], f"row {r}")
    mapping: dict[str, str] = {}

    def build_row(rr: int, kind: type, arch: dict[str, Any]) -> Any:
        return _build_row(p, kind, arch, RowShape.from_json(dict(row)), f"row {rr}", len(h.entries))

    skeleton = descendant_skeleton({r: cls}, {r: row["arch"]}, {}, target, pool_keys=mapping, build_row=build_row)
    prefix = f"rows.{r}."
    index = {n: {"dtype": e["dtype"], "shape": e["shape"]} for n, e in h.entries.items()}  # the file's own header
    state = skeleton.state_dict()
    expected = {n[len(prefix):]: state[own] for n, own in mapping.items()}  # row keys -> the rebuilt tensors
    _match_index(p, index, {n: (None, list(t.shape)) for n, t in expected.items()}, "the row's architecture", "the file")
    _check_float(p, index, expected)
    tensors = _read_tensors(p, list(index), device, None, mmap)
    _load_into(p, skeleton, {mapping[prefix + n]: t for n, t in tensors.items()})
    return _attach(p, skeleton.eval(), (desc.get("info") or {}).get("data"))


def export_timm_state_dict(
    pool_or_path: Pool | PathLike, key: Path | int | str, out_path: PathLike, *, registry: Any = None
) -> dict[str, Any]:
    """Write a single-row descendant as the row model's own state dict (safetensors).

The keys are the row network's own (for ``timm-vit``, plain timm ``VisionTransformer``
    keys ``patch_embed.*``, ``blocks.<i>.*``, ``norm.*``, ``head.*``; a Swin row's are
    ``SwinTransformer`` keys, ...); :func:`load_plain_row` rebuilds the network through the
    adapter recorded in the file. Returns the row's arch (stored in the metadata as
    ``stitchkit_arch``, next to the adapter as ``stitchkit_adapter``).
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
    data = (desc.get("info") or {}).get("data") or {}
    if data.get("preprocessing"):  # timm's data config and the class names, for inference without stitchkit
        extra["stitchkit_preprocessing"] = _dumps(data["preprocessing"])
        extra["stitchkit_classes"] = _dumps(data.get("classes") or [])
    prepared = _prepare(out, tensors)
    metadata = {KIND_KEY: PLAIN_FORMAT, "format_version": FORMAT_VERSION, "writer": _writer(), **extra}
    _save(out, prepared, metadata)
    return dict(row["arch"])


def load_plain_row(path: PathLike, registry: Any = None) -> Any:
    """A ``--timm`` export rebuilt as its row's own network (a timm ``VisionTransformer``, ``SwinTransformer``,
    ``ResNet``, ...) through the adapter recorded in the file (``stitchkit_adapter``, ``stitchkit_arch``),
    its weights loaded strictly; returns the adapter (``.model`` is the network, ``.name`` its family)."""
    import json

    from .state_dicts import load_strict

    registry = registry if registry is not None else default_registry()
    h = _read_header(path)
    p, meta = h.path, h.metadata or {}
    if "stitchkit_arch" not in meta:
        raise PoolFormatError(p, "not a stitchkit --timm export (no stitchkit_arch metadata); write one with 'stitchkit export POOL D --timm'")
    name = meta.get("stitchkit_adapter", "timm-vit")  # the first --timm exports were all ViTs
    cls: Any = _adapter_class(p, registry, name, "the row")
    try:
        arch = json.loads(meta["stitchkit_arch"])
        limits.check_arch(arch, "the row")
    except (json.JSONDecodeError, LimitError) as exc:
        raise PoolFormatError(p, f"stitchkit_arch is not a usable arch: {exc}") from None
    _build_row(p, cls, arch, None, "the row", len(h.entries))  # bounded on the meta device before a real build
    adapter = cls.from_arch(arch)
    load_strict(adapter.model, p, f"the {name} row its metadata describes")
    return adapter


def plain_row_family(path: PathLike, registry: Any = None) -> tuple[str, str]:
    """The adapter a ``--timm`` export records and its network's class, e.g. ``("timm-swin",
    "timm SwinTransformer")``, found by building the row on the meta device (no weights read)."""
    import json

    registry = registry if registry is not None else default_registry()
    h = _read_header(path)
    meta = h.metadata or {}
    name = meta.get("stitchkit_adapter", "timm-vit")
    adapter = _build_row(h.path, _adapter_class(h.path, registry, name, "the row"), json.loads(meta.get("stitchkit_arch", "{}")),
                         None, "the row", len(h.entries))
    kind = type(adapter.model)
    return name, f"{kind.__module__.split('.')[0]} {kind.__name__}"
