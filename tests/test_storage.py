"""The pool file format: bit-exact round trips, lazy per-descendant reads, standalone
exports, and one documented error (PoolFormatError) for every kind of damaged file.

Files are checked against a reader written here from docs/format.md alone
(struct + json + numpy), not against stitchkit's own reader.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import struct
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

import stitchkit.io.header as header
import stitchkit.io.storage as storage
from helpers import tiny_row
from stitchkit import hookimpl
from stitchkit.core.errors import PathError, PoolFormatError, StitchkitError
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import Path, RowShape
from stitchkit.io.storage import (
    export_descendant,
    export_timm_state_dict,
    load_descendant,
    load_exported,
    load_pool,
    read_descendant_metadata,
    read_pool_metadata,
    save_pool,
    update_evaluation,
)
from stitchkit.families.vit import TimmViT

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "format.md"
PROVENANCE = {"ancestry": "deit_tiny_patch16_224", "dataset": "digits", "seed": 3}
BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]
STEM_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
HEAD_KEYS = ["norm.weight", "norm.bias", "head.weight", "head.bias"]
NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


# --------------------------------------------------------------------------- fixtures
def make_pool() -> Pool:
    """Three rows of depth 3 (widths 16, 32, 48), 8 sequential paths, each labelled d<i>."""
    rows = [tiny_row(RowShape(3, 16, 2), 0), tiny_row(RowShape(3, 32, 4), 1), tiny_row(RowShape(3, 48, 4), 2)]
    rows[1].timm_name = "vit_tiny_test"  # an ancestry identity that must survive the round trip
    method = SequentialMethod()
    stitches = method.stitches([r.shape for r in rows])
    paths = [Path(p.segments, p.stitches, label=f"d{i}") for i, p in enumerate(method.paths([r.shape for r in rows], stitches))]
    torch.manual_seed(7)
    w = torch.randn(32, 16)
    extras = {"W": w, "W_tied": w, "W_row0": w[0], "M_t": torch.randn(16, 32).t()}  # shared storage + views
    pool = Pool(rows, stitches, paths, method="sequential", info={"ancestry": {"width": 48}}, extras=extras)
    for layer in pool.stitches.values():  # non-default stitch weights, so a stitch mix-up would show
        torch.nn.init.normal_(layer.weight)
        torch.nn.init.normal_(layer.bias)
    pool.evaluation = {paths[2].name: {"top1": 0.625, "params": 1234}, paths[5].name: {"top1": 0.5}}
    return pool.eval()


@pytest.fixture(scope="module")
def pool() -> Pool:
    return make_pool()


@pytest.fixture(scope="module")
def pool_file(pool, tmp_path_factory) -> pathlib.Path:
    return save_pool(pool, tmp_path_factory.mktemp("pool") / "pool.safetensors", provenance=PROVENANCE)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- an independent reader (docs/format.md)
def read_raw(path) -> tuple[dict, bytes]:
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def doc_digest(meta: dict) -> str:
    """docs/format.md's metadata digest: sha256 of every other entry as sorted, compact JSON."""
    import hashlib

    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def write_raw(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + data)


def raw_tensor(header: dict, data: bytes, name: str) -> np.ndarray:
    e = header[name]
    begin, end = e["data_offsets"]
    return np.frombuffer(data[begin:end], dtype=NP_DTYPES[e["dtype"]]).reshape(e["shape"])


def expected_pool_tensors(pool: Pool) -> dict[str, torch.Tensor]:
    out = {}
    for r, row in enumerate(pool.rows):
        for k, v in row.state_dict().items():
            out[f"rows.{r}.{k}"] = v
    for name, layer in pool.stitches.items():
        out[f"stitches.{name}.weight"], out[f"stitches.{name}.bias"] = layer.weight, layer.bias
    out.update({f"extras.{k}": v for k, v in pool.extras.items()})
    return out


def descendant_tensor_names(path: Path) -> set[str]:
    """The pool tensors a descendant needs, from its path alone: stem of the first row,
    the path's blocks, the stitch layers, final norm and head of the last row."""
    first, last = path.segments[0].row, path.segments[-1].row
    names = {f"rows.{first}.{k}" for k in STEM_KEYS} | {f"rows.{last}.{k}" for k in HEAD_KEYS}
    for seg in path.segments:
        names |= {f"rows.{seg.row}.blocks.{b}.{k}" for b in range(seg.start, seg.stop) for k in BLOCK_KEYS}
    names |= {f"stitches.{s}.{p}" for s in path.stitches for p in ("weight", "bias")}
    return names


# --------------------------------------------------------------------------- round trip
def test_file_layout_follows_the_docs(pool, pool_file):
    header, data = read_raw(pool_file)
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt" and meta["stitchkit_format"] == "stitchkit-pool" and meta["format_version"] == "3"
    assert meta["metadata_sha256"] == doc_digest(meta)
    expected = expected_pool_tensors(pool)
    assert set(header) == set(expected)
    assert json.loads(meta["tensors"]) == {n: {"dtype": "F32", "shape": list(t.shape)} for n, t in expected.items()}
    for name, t in expected.items():
        np.testing.assert_array_equal(raw_tensor(header, data, name), t.detach().numpy())
    desc = json.loads(meta["pool"])
    assert desc["method"] == "sequential"
    assert [(r["adapter"], r["width"], r["depth"], r["heads"]) for r in desc["rows"]] == [
        ("timm-vit", 16, 3, 2), ("timm-vit", 32, 3, 4), ("timm-vit", 48, 3, 4)
    ]
    assert desc["rows"][1]["arch"]["timm_name"] == "vit_tiny_test"
    assert [p["label"] for p in desc["paths"]] == [f"d{i}" for i in range(8)]
    assert desc["info"] == {"ancestry": {"width": 48}, "provenance": PROVENANCE}
    assert desc["evaluation"] == pool.evaluation
    assert desc["extras"] == ["M_t", "W", "W_row0", "W_tied"]
    # tensor data starts 8-byte aligned (safetensors pads the header with spaces)
    assert (8 + struct.unpack("<Q", pool_file.read_bytes()[:8])[0]) % 8 == 0


def test_round_trip_is_bit_exact(pool, pool_file, core_registry, images):
    loaded = load_pool(pool_file, core_registry)
    a, b = expected_pool_tensors(pool), expected_pool_tensors(loaded)
    assert a.keys() == b.keys()
    for name in a:
        assert b[name].dtype == a[name].dtype and torch.equal(b[name], a[name]), name
    assert loaded.extras["W_tied"].data_ptr() != pool.extras["W"].data_ptr()
    want = pool.describe()
    want["info"] = {**want["info"], "provenance": PROVENANCE}
    assert loaded.describe() == want
    assert loaded.adapters[1].timm_name == "vit_tiny_test"
    loaded.eval()
    with torch.no_grad():
        for p in pool.paths:
            assert torch.equal(loaded.descendant(p.name)(images), pool.descendant(p)(images)), p.name


@pytest.mark.parametrize("loader", ["pool", "descendant", "exported"])
def test_loaded_weights_do_not_follow_an_in_place_rewrite(pool, tmp_path, core_registry, images, loader):
    """safetensors maps the file; a load copies the weights out, so ``cp other.safetensors this.safetensors``
    (truncate and rewrite in place, same inode) leaves a loaded model's outputs unchanged. With
    ``mmap=True`` the weights stay mapped: they equal the default load's until the file changes."""
    import shutil

    path = next(p for p in pool.paths if len(p.segments) == 3)
    live, other = tmp_path / "live.safetensors", tmp_path / "other.safetensors"
    changed = make_pool()
    for t in changed.state_dict().values():
        if t.is_floating_point():
            t.data.add_(1.0)
    if loader == "exported":
        export_descendant(pool, path.label, live, registry=core_registry)
        export_descendant(changed, path.label, other, registry=core_registry)
        load = lambda **kw: load_exported(live, core_registry, **kw)  # noqa: E731
    else:
        save_pool(pool, live)
        save_pool(changed, other)
        load = (lambda **kw: load_pool(live, core_registry, **kw).descendant(path)) if loader == "pool" else (  # noqa: E731
            lambda **kw: load_descendant(live, path, core_registry, **kw))
    model, mapped = load().eval(), load(mmap=True).eval()
    with torch.no_grad():
        before = model(images)
        assert torch.equal(mapped(images), before)
        inode = live.stat().st_ino
        shutil.copyfile(other, live)  # in place: same inode, new bytes
        assert live.stat().st_ino == inode
        assert torch.equal(model(images), before)
        assert not torch.equal(load()(images), before)  # the file did change


def test_round_trip_keeps_bfloat16(pool, tmp_path, core_registry):
    half = make_pool().to(torch.bfloat16)
    half.extras = {}
    path = save_pool(half, tmp_path / "bf16.safetensors")
    assert {e["dtype"] for n, e in read_raw(path)[0].items() if n != "__metadata__"} == {"BF16"}
    loaded = load_pool(path, core_registry)
    assert list(half.state_dict()) == list(loaded.state_dict())
    for (n, x), (_, y) in zip(half.state_dict().items(), loaded.state_dict().items()):
        assert y.dtype == torch.bfloat16 and torch.equal(x, y), n


def test_read_pool_metadata_reads_the_header_only(pool, pool_file, monkeypatch):
    """A spy on the file object: exactly the 8-byte length and the JSON header are read, no tensor byte."""
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            reads.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    # the header and metadata are read by stitchkit.io.header (standard library only), re-exported by storage
    monkeypatch.setattr(header, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    for loader in ("load_file", "safe_open"):
        if hasattr(storage, loader):  # reading tensors is not allowed here
            monkeypatch.setattr(storage, loader, lambda *a, **k: pytest.fail("read_pool_metadata read tensors"))
    header_len = struct.unpack("<Q", pool_file.read_bytes()[:8])[0]
    meta = read_pool_metadata(pool_file)
    assert sum(reads) == 8 + header_len and pool_file.stat().st_size > 8 + header_len + 10_000
    assert meta["format"] == "stitchkit-pool" and meta["format_version"] == "3"
    assert meta["writer"].startswith("stitchkit")
    assert meta["pool"]["evaluation"] == pool.evaluation
    assert meta["tensors"]["rows.2.head.weight"] == {"dtype": "F32", "shape": [5, 48]}
    assert len(meta["tensors"]) == len(expected_pool_tensors(pool))


def test_read_pool_metadata_needs_no_plugin(pool_file, tmp_path, core_registry):
    """An adapter nobody registered: the header is still readable; loading says which plugin is missing."""
    bad = tmp_path / "plugin.safetensors"
    mutate_meta(pool_file, bad, lambda m: m.update(pool=m["pool"].replace('"timm-vit"', '"my-adapter"')))
    assert read_pool_metadata(bad)["pool"]["rows"][0]["adapter"] == "my-adapter"
    with pytest.raises(PoolFormatError, match=r"adapter 'my-adapter'.*install the plugin") as err:
        load_pool(bad, core_registry)
    assert err.value.path == str(bad)


class BufferedViT(TimmViT):
    """A throwaway adapter whose blocks keep a non-persistent buffer (as RoPE tables are kept)."""

    name = "buffered-vit"

    @classmethod
    def from_arch(cls, arch):
        adapter = super().from_arch(arch)
        for block in adapter.model.blocks:
            block.register_buffer("table", torch.arange(4.0), persistent=False)
        return adapter


def test_non_persistent_buffers_are_refused_clearly(tmp_path):
    reg = Registry(load_entrypoints=False)
    plugin = types.ModuleType("buffered_plugin")
    plugin.register_ancestries = hookimpl(lambda register: register(BufferedViT))
    reg.register_plugin(plugin, name="buffered")
    rows = [BufferedViT.from_arch(tiny_row(RowShape(2, 16, 2)).arch())]
    pool = Pool.from_method(SequentialMethod(), rows)
    path = save_pool(pool, tmp_path / "buffered.safetensors")
    with pytest.raises(StitchkitError, match=r"rows.0.blocks.0.table.*persistent") as err:
        load_pool(path, reg)
    assert not isinstance(err.value, PoolFormatError)  # the file is fine; the adapter is not
    with pytest.raises(StitchkitError, match=r"segments.0.0.table.*persistent"):
        load_descendant(path, 0, reg)


# --------------------------------------------------------------------------- lazy descendants
@pytest.mark.parametrize("index", range(8))
def test_load_descendant_reads_only_its_tensors(pool, pool_file, core_registry, images, monkeypatch, index):
    path = pool.paths[index]
    spied: list[str] = []
    real_open = storage.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_tensor(self, name):
            spied.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(storage, "safe_open", Spy)
    reported: list[str] = []
    key = [index, path.name, path.label][index % 3]
    d = load_descendant(pool_file, key, core_registry, on_read=reported.append).eval()
    expected = descendant_tensor_names(path)
    assert len(spied) == len(set(spied)) and set(spied) == expected
    assert sorted(reported) == sorted(spied)
    assert d.path == path
    with torch.no_grad():
        assert torch.equal(d(images), pool.descendant(path)(images))


def test_load_descendant_unknown_key(pool_file, core_registry):
    with pytest.raises(PathError, match="out of range"):
        load_descendant(pool_file, 8, core_registry)
    with pytest.raises(PathError, match="no descendant named 'r9"):
        load_descendant(pool_file, "r9[0:3]", core_registry)


# --------------------------------------------------------------------------- export
@pytest.mark.parametrize("source", ["pool", "file"])
def test_export_and_load_exported(pool, pool_file, core_registry, images, tmp_path, source):
    path = next(p for p in pool.paths if len(p.segments) == 3)  # r0 -> r1 -> r2, two stitch layers
    out = tmp_path / "d.safetensors"
    export_descendant(pool if source == "pool" else pool_file, path.label, out, registry=core_registry)
    header, _ = read_raw(out)
    meta = header.pop("__metadata__")
    assert meta["format"] == "pt" and meta["stitchkit_format"] == "stitchkit-descendant" and meta["format_version"] == "3"
    assert meta["metadata_sha256"] == doc_digest(meta)
    assert set(header) == set(pool.descendant(path).state_dict())
    desc = read_descendant_metadata(out)["descendant"]
    assert desc["name"] == path.name and desc["path"] == path.to_json()
    assert [(r["row"], r["adapter"], r["arch"]["embed_dim"]) for r in desc["rows"]] == [(0, "timm-vit", 16), (1, "timm-vit", 32), (2, "timm-vit", 48)]
    assert [s["name"] for s in desc["stitches"]] == list(path.stitches)
    assert desc["evaluation"] is None
    if source == "file":
        assert desc["info"]["provenance"] == PROVENANCE
    d = load_exported(out, core_registry).eval()
    with torch.no_grad():
        assert torch.equal(d(images), pool.descendant(path)(images))


def test_export_keeps_the_evaluation_row(pool, tmp_path, core_registry, images):
    path = pool.paths[2]
    out = export_descendant(pool, 2, tmp_path / "e.safetensors")
    assert read_descendant_metadata(out)["descendant"]["evaluation"] == {"top1": 0.625, "params": 1234}
    with torch.no_grad():
        assert torch.equal(load_exported(out, core_registry).eval()(images), pool.descendant(path)(images))


def test_pool_and_descendant_files_are_not_interchangeable(pool, pool_file, tmp_path, core_registry):
    out = export_descendant(pool, 3, tmp_path / "x.safetensors")
    with pytest.raises(PoolFormatError, match="is a stitchkit-descendant file.*load_exported"):
        load_pool(out, core_registry)
    with pytest.raises(PoolFormatError, match="is a stitchkit-pool file.*load_pool"):
        load_exported(pool_file, core_registry)


@pytest.mark.parametrize("source", ["pool", "file"])
def test_timm_state_dict_export_loads_into_plain_timm(pool, pool_file, tmp_path, images, source):
    index = next(i for i, p in enumerate(pool.paths) if p.is_single_row and p.rows == (1,))
    out = tmp_path / "timm.safetensors"
    arch = export_timm_state_dict(pool if source == "pool" else pool_file, index, out)
    state = load_file(str(out))
    assert set(state) == {*STEM_KEYS, *HEAD_KEYS, *(f"blocks.{b}.{k}" for b in range(3) for k in BLOCK_KEYS)}
    kwargs = {k: v for k, v in arch.items() if k != "timm_name"}
    model = VisionTransformer(**kwargs)
    model.load_state_dict(state)  # strict
    model.eval()
    with torch.no_grad():
        want = pool.descendant(index)(images)
        assert torch.equal(model(images), want)
        adapter = TimmViT(VisionTransformer(**kwargs))
        adapter.load_checkpoint(out)  # the user-facing loader of local checkpoint files
        assert torch.equal(adapter.model.eval()(images), want)


def test_timm_export_refuses_a_stitched_descendant(pool, tmp_path):
    with pytest.raises(PathError, match="stitched from rows"):
        export_timm_state_dict(pool, 4, tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()


# --------------------------------------------------------------------------- evaluation updates
def test_update_evaluation_replaces_or_merges(pool, pool_file, tmp_path, core_registry):
    f = tmp_path / "eval.safetensors"
    f.write_bytes(pool_file.read_bytes())
    _, data_before = read_raw(f)
    p0, p3 = pool.paths[0], pool.paths[3]
    got = update_evaluation(f, {0: {"top1": 0.25}, p3.label: {"top1": 0.75, "macs": 10}})
    assert got == {p0.name: {"top1": 0.25}, p3.name: {"top1": 0.75, "macs": 10}}
    assert read_pool_metadata(f)["pool"]["evaluation"] == got
    got = update_evaluation(f, {p3: {"top1": 0.8}, pool.paths[4].name: {"top5": 1.0}}, merge=True)
    assert got == {p0.name: {"top1": 0.25}, p3.name: {"top1": 0.8, "macs": 10}, pool.paths[4].name: {"top5": 1.0}}
    header, data_after = read_raw(f)
    assert data_after == data_before  # tensor bytes copied verbatim
    assert load_file(str(f)).keys() == load_file(str(pool_file)).keys()  # still a plain safetensors file
    loaded = load_pool(f, core_registry)
    assert loaded.evaluation == got
    for name, t in expected_pool_tensors(pool).items():
        assert torch.equal(expected_pool_tensors(loaded)[name], t)
    with pytest.raises(PathError, match="no descendant named"):
        update_evaluation(f, {"nope": {"top1": 1.0}})
    with pytest.raises(PoolFormatError, match="not plain JSON"):
        update_evaluation(f, {0: {"top1": math.nan}})
    assert read_pool_metadata(f)["pool"]["evaluation"] == got


# --------------------------------------------------------------------------- atomic writes
def test_failed_save_leaves_the_old_file_intact(pool, tmp_path, monkeypatch):
    target = tmp_path / "pool.safetensors"
    save_pool(pool, target)
    before = target.read_bytes()

    n = len(pool.state_dict()) + len(pool.extras)
    calls = []
    real = storage._raw

    def half_write(t):  # the first n calls hash the tensors; fail while writing them, the temp file half full
        calls.append(1)
        if len(calls) > n + 3:
            raise OSError("disk full")
        return real(t)

    monkeypatch.setattr(storage, "_raw", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_pool(pool, target, provenance={"changed": True})  # new content: an unchanged pool is not rewritten at all
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.safetensors"]


def test_saving_an_unchanged_pool_leaves_the_file_alone(pool, tmp_path):
    target = tmp_path / "pool.safetensors"
    save_pool(pool, target, provenance={"run": 1})
    stat = target.stat()
    save_pool(pool, target, provenance={"run": 1})
    assert target.stat().st_mtime_ns == stat.st_mtime_ns and target.stat().st_ino == stat.st_ino
    save_pool(pool, target, provenance={"run": 2})  # other metadata: written (atomically: a new inode)
    assert target.stat().st_ino != stat.st_ino


def test_failed_evaluation_update_leaves_the_old_file_intact(pool, pool_file, tmp_path, monkeypatch):
    target = tmp_path / "pool.safetensors"
    target.write_bytes(pool_file.read_bytes())
    before = target.read_bytes()

    def broken_copy(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError("disk full")

    monkeypatch.setattr(storage.shutil, "copyfileobj", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        update_evaluation(target, {0: {"top1": 1.0}})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.safetensors"]


# --------------------------------------------------------------------------- writing bad pools
def test_save_refuses_what_it_could_not_read_back(tmp_path):
    pool = make_pool()
    pool.info["when"] = {1, 2}  # a set is not JSON
    with pytest.raises(PoolFormatError, match="not plain JSON"):
        save_pool(pool, tmp_path / "a.safetensors")
    pool = make_pool()
    pool.evaluation = {"r7[0:3]": {"top1": 1.0}}
    with pytest.raises(PoolFormatError, match="cannot write: evaluation results for descendants the pool does not have"):
        save_pool(pool, tmp_path / "b.safetensors")
    with torch.device("meta"):
        meta_pool = Pool.from_method(SequentialMethod(), [TimmViT.from_arch(tiny_row(RowShape(2, 16, 2)).arch())])
    with pytest.raises(PoolFormatError, match="meta device"):
        save_pool(meta_pool, tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- corruptions
def restamp(meta: dict) -> dict:
    """Give edited metadata a matching digest, as a crafted file would: the checks behind the digest still hold."""
    if "metadata_sha256" in meta:
        meta["metadata_sha256"] = doc_digest(meta)
    return meta


def mutate_meta(src, dst, fn, stamp: bool = True) -> None:
    """Rewrite __metadata__ (a dict of strings) in place of a valid file, keeping the tensors
    (with a matching digest unless ``stamp`` is false)."""
    header, data = read_raw(src)
    fn(header["__metadata__"])
    if stamp:
        restamp(header["__metadata__"])
    write_raw(dst, header, data)


def mutate_pool_json(fn):
    def apply(meta):
        desc = json.loads(meta["pool"])
        fn(desc)
        meta["pool"] = json.dumps(desc)

    return apply


def resave(src, dst, fn_tensors=None, fn_meta=None) -> None:
    """Re-save a file through safetensors with changed tensors and/or metadata."""
    tensors = load_file(str(src))
    meta = read_raw(src)[0]["__metadata__"]
    if fn_tensors:
        fn_tensors(tensors)
    if fn_meta:
        fn_meta(meta)
    save_file(tensors, str(dst), metadata=restamp(meta))


def set_index(name, **fields):
    def apply(meta):
        index = json.loads(meta["tensors"])
        index[name].update(fields)
        meta["tensors"] = json.dumps(index)

    return apply


def _truncate(n):
    return lambda src, dst: dst.write_bytes(src.read_bytes()[:n])


def _cut_header(src, dst):
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    dst.write_bytes(raw[: 8 + n // 2])


QKV = "rows.0.blocks.1.attn.qkv.weight"
CORRUPTIONS = {
    "missing file": (lambda src, dst: None, "file not found"),
    "empty file": (_truncate(0), "too short"),
    "truncated in the length field": (_truncate(5), "too short"),
    "truncated in the header": (_cut_header, r"header length field says \d+ bytes but only \d+"),
    "truncated in the data": (lambda src, dst: dst.write_bytes(src.read_bytes()[:-10]), r"truncated: the tensors need \d+ bytes"),
    "trailing bytes": (lambda src, dst: dst.write_bytes(src.read_bytes() + b"\0" * 4), "4 unexplained bytes"),
    "garbage bytes": (lambda src, dst: dst.write_bytes(bytes(range(256)) * 4), "not a safetensors file"),
    "text file": (lambda src, dst: dst.write_bytes(b"this is not a pool at all\n"), "header length field says"),
    "pickle": (lambda src, dst: torch.save({"a": torch.ones(2)}, dst), "not a safetensors file"),
    "foreign safetensors": (lambda src, dst: save_file({"a": torch.ones(2)}, str(dst), metadata={"format": "pt"}), "did not write.*format is 'pt'"),
    "no metadata": (lambda src, dst: save_file({"a": torch.ones(2)}, str(dst)), "no 'format' key"),
    "future version": (lambda s, d: mutate_meta(s, d, lambda m: m.update(format_version="4")), "format_version '4' is not supported.*upgrade"),
    "missing version": (lambda s, d: mutate_meta(s, d, lambda m: m.pop("format_version")), "missing format_version"),
    "metadata not JSON": (lambda s, d: mutate_meta(s, d, lambda m: m.update(pool="{not json")), "'pool' is not valid JSON"),
    "metadata NaN": (lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["info"].update(x=math.nan))), "NaN is not valid JSON"),
    "metadata fails schema": (lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["rows"][0].update(depth="3"))), r"fails the schema at rows\[0\]\.depth: expected integer, got string"),
    "metadata missing key": (lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p.pop("paths"))), "missing required key 'paths'"),
    "no tensor index": (lambda s, d: mutate_meta(s, d, lambda m: m.pop("tensors")), "no 'tensors' entry"),
    "path off the pool": (lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["paths"][0].update(segments=[[0, 0, 4]]))), "invalid pool.*out of range"),
    "unknown evaluation key": (lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["evaluation"].update({"r5[0:3]": {}}))), "descendants the pool does not have"),
    "dropped tensor": (lambda s, d: resave(s, d, lambda t: t.pop(QKV)), f"listed in the metadata are missing from the file: '{re.escape(QKV)}'"),
    "extra tensor": (lambda s, d: resave(s, d, lambda t: t.update(stowaway=torch.ones(1))), "in the file are not listed in the metadata: 'stowaway'"),
    "wrong shape": (lambda s, d: resave(s, d, lambda t: t.update({QKV: t[QKV].reshape(-1)})), r"has shape \[768\] in the file but \[48, 16\] in the metadata"),
    "wrong dtype": (lambda s, d: resave(s, d, lambda t: t.update({QKV: t[QKV].half()})), "has dtype F16 in the file but F32 in the metadata"),
    "dropped extra": (lambda s, d: resave(s, d, lambda t: t.pop("extras.W"), set_index_drop("extras.W")), "metadata lists extras"),
    "stitch of the wrong shape": (lambda s, d: resave(s, d, lambda t: t.update({"stitches.s0_1_1.bias": torch.zeros(16)}), set_index("stitches.s0_1_1.bias", shape=[16])), "maps width 16 to 32 and needs \\[32\\]"),
    "header dtype lies": (lambda s, d: raw_edit(s, d, lambda h: h[QKV].update(dtype="I32")), "has dtype I32 in the file but F32"),
    "header size lies": (lambda s, d: raw_edit(s, d, lambda h: h[QKV].update(shape=[48, 15])), "data_offsets span 3072 bytes but F32 \\[48, 15\\] needs 2880"),
    "overlapping tensors": (lambda s, d: raw_edit(s, d, overlap), "overlap or leave a gap"),
    "duplicate JSON key": (lambda s, d: d.write_bytes(dup_key(s)), "duplicate key"),
}


def set_index_drop(name):
    def apply(meta):
        index = json.loads(meta["tensors"])
        index.pop(name)
        meta["tensors"] = json.dumps(index)

    return apply


def raw_edit(src, dst, fn) -> None:
    header, data = read_raw(src)
    fn(header)
    write_raw(dst, header, data)


def overlap(header):
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
    b = header[names[1]]  # the second tensor now starts 4 bytes inside the first
    b["data_offsets"][0] -= 4
    b["data_offsets"][1] -= 4


def dup_key(src) -> bytes:
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    text = raw[8 : 8 + n].decode().rstrip()
    text = text[:-1] + ',"__metadata__":{"format":"x"}}'
    body = text.encode()
    return struct.pack("<Q", len(body)) + body + raw[8 + n :]


READERS = {
    "load_pool": lambda f, reg: load_pool(f, reg),
    "load_descendant": lambda f, reg: load_descendant(f, 3, reg),
    "read_pool_metadata": lambda f, reg: read_pool_metadata(f),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_every_corruption_is_a_pool_format_error(pool_file, tmp_path, core_registry, case):
    make, message = CORRUPTIONS[case]
    bad = tmp_path / "bad.safetensors"
    make(pool_file, bad)
    for reader_name, reader in READERS.items():
        with pytest.raises(PoolFormatError, match=message) as err:
            reader(bad, core_registry)
        assert err.value.path == str(bad), reader_name
        assert str(err.value).startswith(f"{bad}: "), reader_name
    with pytest.raises(PoolFormatError, match=message):
        update_evaluation(bad, {})


ARCH_CORRUPTIONS = {
    # consistent header and index, but not what the row's arch builds: only a loader with the adapter sees it
    "shape disagrees with the arch": (
        lambda s, d: resave(s, d, lambda t: t.update({QKV: torch.zeros(47, 16)}), set_index(QKV, shape=[47, 16])),
        r"'rows.0.blocks.1.attn.qkv.weight' has shape \[48, 16\] in the rows' architectures but \[47, 16\] in the file",
    ),
    "integer weights": (
        lambda s, d: resave(s, d, lambda t: t.update({QKV: t[QKV].int()}), set_index(QKV, dtype="I32")),
        "stored as I32, but it is a floating-point weight",
    ),
    "mixed float dtypes": (
        lambda s, d: resave(s, d, lambda t: t.update({QKV: t[QKV].half()}), set_index(QKV, dtype="F16")),
        "stored as F16 but the other weights as F32",
    ),
    "arch builds another shape": (
        lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["rows"][0]["arch"].update(num_heads=4))),
        r"row 0: its arch builds a 3x16:4 row but the metadata says 3x16:2",
    ),
    "arch cannot be built": (
        lambda s, d: mutate_meta(s, d, mutate_pool_json(lambda p: p["rows"][0]["arch"].update(wings=2))),
        "row 0: adapter 'timm-vit' cannot build arch",
    ),
}


@pytest.mark.parametrize("case", sorted(ARCH_CORRUPTIONS))
def test_architecture_mismatch_is_a_pool_format_error(pool_file, tmp_path, core_registry, case):
    make, message = ARCH_CORRUPTIONS[case]
    bad = tmp_path / "bad.safetensors"
    make(pool_file, bad)
    read_pool_metadata(bad)  # the header alone is consistent
    # descendant 1, r0[0:2]+s0_1_2+r1[2:3], uses the corrupted row 0 and its block 1
    for reader in (READERS["load_pool"], lambda f, reg: load_descendant(f, 1, reg)):
        with pytest.raises(PoolFormatError, match=message) as err:
            reader(bad, core_registry)
        assert err.value.path == str(bad)


def test_load_descendant_builds_and_checks_only_its_own_rows(pool, pool_file, tmp_path, core_registry, images):
    """A row the descendant does not use is neither built nor checked: a broken row 0 does not stop r1[0:3]."""
    bad = tmp_path / "bad.safetensors"
    mutate_meta(pool_file, bad, mutate_pool_json(lambda p: p["rows"][0]["arch"].update(wings=2)))
    with pytest.raises(PoolFormatError, match="row 0: adapter 'timm-vit' cannot build arch"):
        load_pool(bad, core_registry)
    built: list[tuple[str, int]] = []
    original = TimmViT.from_arch.__func__

    def spy(cls, arch):
        built.append((arch["embed_dim"], arch["depth"]))
        return original(cls, arch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TimmViT, "from_arch", classmethod(spy))
        single = load_descendant(bad, 3, core_registry).eval()
        assert built == [(32, 3)]  # row 1 alone (whole, on the meta device: no family is assumed to drop blocks)
        built.clear()
        stitched = load_descendant(pool_file, 5, core_registry).eval()  # r1[0:2]+s1_2_2+r2[2:3]
        assert sorted(set(built)) == [(32, 3), (48, 3)]  # rows 1 and 2 only
    with torch.no_grad():
        torch.testing.assert_close(single(images), pool.descendant(3).eval()(images), rtol=0, atol=0)
        torch.testing.assert_close(stitched(images), pool.descendant(5).eval()(images), rtol=0, atol=0)


def test_corrupt_descendant_files(pool, tmp_path, core_registry):
    three_rows = next(p for p in pool.paths if len(p.segments) == 3)
    good = export_descendant(pool, three_rows.label, tmp_path / "good.safetensors")
    name = "segments.0.0.attn.qkv.weight"
    cases = {
        "dropped tensor": (lambda d: resave(good, d, lambda t: t.pop(name)), "missing from the file"),
        "future version": (lambda d: mutate_meta(good, d, lambda m: m.update(format_version="7")), "format_version '7'"),
        "truncated": (lambda d: d.write_bytes(good.read_bytes()[:-3]), "truncated"),
        "renamed descendant": (
            lambda d: mutate_meta(good, d, lambda m: m.update(descendant=m["descendant"].replace('"name":"r', '"name":"x'))),
            "names the descendant",
        ),
        "row not used": (
            lambda d: mutate_meta(good, d, lambda m: m.update(descendant=m["descendant"].replace('"row":0', '"row":2'))),
            "lists row 2 twice|uses rows",
        ),
        "shape disagrees": (
            lambda d: resave(good, d, lambda t: t.update({name: torch.zeros(47, 16)}), set_index(name, shape=[47, 16])),
            "in the descendant's architecture but",
        ),
    }
    for case, (make, message) in cases.items():
        bad = tmp_path / f"{case.replace(' ', '_')}.safetensors"
        make(bad)
        with pytest.raises(PoolFormatError, match=message) as err:
            load_exported(bad, core_registry)
        assert err.value.path == str(bad), case


# --------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 64) | st.floats(-1e3, 1e3) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def only_pool_format_errors(path, core_registry) -> None:
    """Loading may succeed (a harmless mutation) or raise PoolFormatError; nothing else."""
    for reader in READERS.values():
        try:
            reader(path, core_registry)
        except PoolFormatError as exc:
            assert exc.path == str(path)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path, core_registry, blob):
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(blob)
    with pytest.raises(PoolFormatError):
        load_pool(f, core_registry)


@FUZZ
@given(header=json_values, tail=st.binary(max_size=64), length_delta=st.sampled_from([0, 0, 0, -1, 1, 1 << 40]))
def test_fuzz_random_json_headers(tmp_path, core_registry, header, tail, length_delta):
    text = json.dumps(header).encode()
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(struct.pack("<Q", max(0, len(text) + length_delta)) + text + tail)
    with pytest.raises(PoolFormatError):
        load_pool(f, core_registry)


def _locations(value, prefix=()):
    """Every (container, key) pair inside a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield value, k
            yield from _locations(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield value, i
            yield from _locations(v)


@FUZZ
@given(data=st.data())
def test_fuzz_metadata_mutations(pool_file, tmp_path, core_registry, data):
    header, blob = read_raw(pool_file)
    meta = header.pop("__metadata__")
    original = dict(meta)
    tree = {"meta": meta, "pool": json.loads(meta["pool"]), "tensors": json.loads(meta["tensors"]), "entries": header}
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        where = data.draw(st.sampled_from(sorted(tree)), label="where")
        spots = list(_locations(tree[where]))
        if not spots:
            continue
        container, key = spots[data.draw(st.integers(0, len(spots) - 1), label="spot")]
        op = data.draw(st.sampled_from(["replace", "delete", "text"]), label="op")
        if op == "delete":
            container.pop(key)
        elif op == "text":
            container[key] = data.draw(st.text(max_size=20), label="text")
        else:
            container[key] = data.draw(json_values, label="value")
    for k in ("pool", "tensors"):
        if meta.get(k) is original[k]:  # not replaced as a whole: write the mutated tree
            meta[k] = json.dumps(tree[k])
    if data.draw(st.booleans(), label="restamp"):  # a crafted file: the checks behind the digest
        restamp(meta)
    f = tmp_path / "fuzz.safetensors"
    write_raw(f, {"__metadata__": meta, **header}, blob)
    only_pool_format_errors(f, core_registry)


# --------------------------------------------------------------------------- docs
def _doc_blocks() -> dict[str, object]:
    text = DOCS.read_text()
    blocks = re.findall(r"<!-- (schema|example): (\w+) -->\s*```json\n(.*?)```", text, re.S)
    return {f"{kind}:{name}": json.loads(body) for kind, name, body in blocks}


def test_docs_print_the_schemas_the_reader_checks():
    blocks = _doc_blocks()
    assert blocks["schema:pool"] == json.loads(json.dumps(storage.POOL_SCHEMA))
    assert blocks["schema:tensors"] == json.loads(json.dumps(storage.TENSORS_SCHEMA))
    assert blocks["schema:descendant"] == json.loads(json.dumps(storage.DESCENDANT_SCHEMA))
    storage._check_schema(blocks["example:pool"], storage.POOL_SCHEMA)
    storage._check_schema(blocks["example:descendant"], storage.DESCENDANT_SCHEMA)


# --------------------------------------------------------------------------- format 1 files
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_format_1_files_still_load(core_registry, tmp_path):
    """Files written by stitchkit before format 2 (tests/fixtures/README.md) load and compute what they did."""
    v1 = FIXTURES / "pool-v1.safetensors"
    assert read_pool_metadata(v1)["format_version"] == "1"
    expected = load_file(str(FIXTURES / "v1-expected.safetensors"))
    pool = load_pool(v1, core_registry)
    assert [s.depth for s in pool.shapes] == [2, 2] and all(s.src_layout == "tokens" for s in pool.stitch_specs.values())
    assert [type(m) for m in pool.stitches.values()] == [torch.nn.Linear]
    pool.eval()
    x = expected["images"]
    # A regression check against logits computed on another machine: CPU kernels differ in the last bits
    # (1.5e-8 between two x86 CPUs), so it compares at float32 precision. Same-process comparisons stay exact.
    tol = dict(rtol=1.3e-6, atol=1e-6)
    with torch.no_grad():
        for i in range(len(pool.paths)):
            logits = pool.descendant(i)(x)
            torch.testing.assert_close(logits, expected[f"logits.{i}"], **tol)
            lazy = load_descendant(v1, i, core_registry).eval()
            torch.testing.assert_close(lazy(x), logits, rtol=0, atol=0)
    d = load_exported(FIXTURES / "descendant-v1.safetensors", core_registry).eval()
    with torch.no_grad():
        torch.testing.assert_close(d(x), expected["logits.1"], **tol)
    # rewritten today, the same pool is a format-3 file with explicit layouts
    out = save_pool(pool, tmp_path / "v3.safetensors")
    meta = read_pool_metadata(out)
    assert meta["format_version"] == "3"
    assert {s["src_layout"] for s in meta["pool"]["stitches"]} == {"tokens"}


def test_file_sha256_hashes_from_an_offset_in_chunks_and_refuses_special_files(tmp_path):
    """The one file digest behind pool data checks, checkpoints and finished builds: equal to hashlib over
    the same bytes (across the 1 MiB chunk boundary), from any offset; a directory or FIFO is a FileError."""
    import hashlib
    import os

    from stitchkit.core.errors import FileError
    from stitchkit.io.files import file_sha256

    data = bytes(range(256)) * 5000  # 1,280,000 bytes: two chunks
    f = tmp_path / "blob.bin"
    f.write_bytes(data)
    assert file_sha256(f) == hashlib.sha256(data).hexdigest()
    assert file_sha256(f, start=1_000_003) == hashlib.sha256(data[1_000_003:]).hexdigest()
    assert file_sha256(f, start=len(data)) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(FileError, match="not a pool file"):
        file_sha256(tmp_path, "pool file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match=r"fifo.*not a checkpoint tensor file"):
        file_sha256(fifo, "checkpoint tensor file")
