"""Format 3: files the Hugging Face loaders accept (``format: pt``) whose metadata is under a digest.

The digest is recomputed here from docs/format.md's definition (sha256 of the other
entries as sorted, compact JSON); the edits are the ones the hardening issue found
changing logits or labels while every structural check passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import stitchkit.io.header as header
from helpers import tiny_row
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.errors import PoolFormatError
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape
from stitchkit.engine.model import load_model, save_model
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
    verify_data,
)
from stitchkit.pool.pool import Pool

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
#: What transformers' safetensors loader accepts as __metadata__["format"] (modeling_utils, load_state_dict).
HF_ALLOWED = {"pt", "tf", "flax", "mlx"}
DATA = {
    "preprocessing": {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5, 0.4, 0.3],
                      "std": [0.2, 0.25, 0.3], "crop_pct": 1.0, "crop_mode": "center"},
    "classes": ["ant", "bee", "cat", "dog", "eel"],
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(load_entrypoints=False)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pool() -> Pool:
    rows = [tiny_row(RowShape(2, 8, 2), 0), tiny_row(RowShape(2, 16, 4), 1)]
    m = SequentialMethod()
    stitches = m.stitches([r.shape for r in rows])
    pool = Pool(rows, stitches, m.paths([r.shape for r in rows], stitches), method="sequential",
                info={"data": DATA}, stitched_final_norm=False)
    torch.manual_seed(0)
    for layer in pool.stitches.values():
        torch.nn.init.normal_(layer.weight, std=0.3)
        torch.nn.init.normal_(layer.bias, std=0.1)
    return pool.eval()


@pytest.fixture(scope="module")
def files(pool, tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("v3")
    out = {"pool": save_pool(pool, d / "pool.safetensors", provenance={"seed": 0})}
    out["descendant"] = export_descendant(out["pool"], 1, d / "desc.safetensors")
    export_timm_state_dict(out["pool"], 0, d / "plain.safetensors")
    out["plain"] = d / "plain.safetensors"
    out["model"] = save_model(tiny_row(RowShape(2, 8, 2), 3), d / "model.safetensors", {"seed": 3})
    return out


def raw(path: pathlib.Path) -> tuple[dict, bytes]:
    b = path.read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def write(path: pathlib.Path, head: dict, data: bytes) -> pathlib.Path:
    text = json.dumps(head).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def edited(src: pathlib.Path, dst: pathlib.Path, key: str, change, restamp: bool = False) -> pathlib.Path:
    """``src`` with one value of its ``key`` description changed; the digest left alone unless ``restamp``."""
    head, data = raw(src)
    meta = head["__metadata__"]
    desc = json.loads(meta[key])
    change(desc)
    meta[key] = json.dumps(desc)
    if restamp:
        meta["metadata_sha256"] = digest(meta)
    return write(dst, head, data)


# --------------------------------------------------------------------------- Hugging Face's check
def test_every_file_stitchkit_writes_passes_the_hugging_face_format_check(files, tmp_path):
    for kind, path in files.items():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert meta["format"] in HF_ALLOWED, kind
        assert meta["metadata_sha256"] == digest(meta), kind
    kinds = {k: raw(p)[0]["__metadata__"]["stitchkit_format"] for k, p in files.items()}
    assert kinds == {"pool": "stitchkit-pool", "descendant": "stitchkit-descendant",
                     "plain": "stitchkit-plain-model", "model": "stitchkit-model"}
    # a pool whose evaluation was rewritten stays valid
    copy = tmp_path / "p.safetensors"
    copy.write_bytes(files["pool"].read_bytes())
    update_evaluation(copy, {0: {"top1": 0.5}})
    meta = raw(copy)[0]["__metadata__"]
    assert meta["format"] == "pt" and meta["metadata_sha256"] == digest(meta)
    assert read_pool_metadata(copy)["pool"]["evaluation"] == {"r0[0:2]": {"top1": 0.5}}


def test_plain_and_model_files_load_as_before(files, pool, images, registry):
    arch = json.loads(raw(files["plain"])[0]["__metadata__"]["stitchkit_arch"])
    arch.pop("timm_name", None)
    vit = VisionTransformer(**arch).eval()
    vit.load_state_dict(load_file(str(files["plain"])))
    with torch.no_grad():
        assert torch.equal(vit(images), pool.descendant(0)(images))
    m = load_model(files["model"], registry)
    assert m.shape == RowShape(2, 8, 2)
    with pytest.raises(PoolFormatError, match="is a plain model.*not a stitchkit-pool file"):
        load_pool(files["plain"], registry)


# --------------------------------------------------------------------------- the metadata digest
EDITS = {
    # key of the description, the one-value change
    "stitched_final_norm": ("pool", lambda d: d.update(stitched_final_norm=True)),
    "a row's global_pool": ("pool", lambda d: d["rows"][1]["arch"].update(global_pool="avg")),
    "class order": ("pool", lambda d: d["info"]["data"]["classes"].reverse()),
    "preprocessing": ("pool", lambda d: d["info"]["data"]["preprocessing"].update(mean=[0.485, 0.456, 0.406])),
    "an evaluation": ("pool", lambda d: d["evaluation"].update({"r1[0:2]": {"top1": 0.99}})),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_one_value_metadata_edit_fails_every_load(files, tmp_path, registry, case):
    key, change = EDITS[case]
    bad = edited(files["pool"], tmp_path / "bad.safetensors", key, change)
    loads = {
        "read_pool_metadata": lambda: read_pool_metadata(bad),
        "load_pool": lambda: load_pool(bad, registry),
        "load_pool verify": lambda: load_pool(bad, registry, verify=True),
        "load_descendant": lambda: load_descendant(bad, 1, registry),
        "update_evaluation": lambda: update_evaluation(bad, {}),
        "export_descendant": lambda: export_descendant(bad, 1, tmp_path / "x.safetensors"),
    }
    for what, load in loads.items():
        with pytest.raises(PoolFormatError, match="does not match the metadata_sha256") as err:
            load()
        assert str(err.value).startswith(f"{bad}: "), what
    assert not (tmp_path / "x.safetensors").exists()


def test_the_edits_change_what_a_descendant_computes(files, tmp_path, registry, images, pool):
    """Why the digest: with a matching digest (a crafted file) each edit loads and changes logits or labels."""
    with torch.no_grad():
        before = pool.descendant(1)(images)
        for case in ("stitched_final_norm", "a row's global_pool"):
            key, change = EDITS[case]
            f = edited(files["pool"], tmp_path / f"{len(case)}.safetensors", key, change, restamp=True)
            after = load_descendant(f, 1, registry).eval()(images)
            assert (after - before).abs().max() > 1e-3, case
    f = edited(files["descendant"], tmp_path / "d.safetensors", "descendant",
               lambda d: d["info"]["data"]["classes"].reverse(), restamp=True)
    assert load_exported(f, registry).classes == DATA["classes"][::-1]


@pytest.mark.parametrize("case", sorted(set(EDITS) - {"an evaluation"}))
def test_a_descendant_file_edit_fails_every_load(files, tmp_path, registry, case):
    _, change = EDITS[case]  # a descendant of rows 0 and 1 lists both, as the pool does
    bad = edited(files["descendant"], tmp_path / "bad.safetensors", "descendant", change)
    for load in (lambda: load_exported(bad, registry), lambda: read_descendant_metadata(bad),
                 lambda: load_exported(bad, registry, verify=True)):
        with pytest.raises(PoolFormatError, match="does not match the metadata_sha256"):
            load()


ENTRY_EDITS = {
    "writer": lambda m: m.update(writer="someone else"),
    "data checksum": lambda m: m.update(data_sha256="0" * 64),
    "tensor index": lambda m: m.update(tensors=m["tensors"].replace('"F32"', '"F32" ', 1)),
    "digest removed": lambda m: m.pop("metadata_sha256"),
    "an entry added": lambda m: m.update(note="hello"),
    "format back to the kind": lambda m: m.update(format="stitchkit-pool"),
    "version lowered": lambda m: m.update(format_version="2"),
    "kind key removed": lambda m: m.pop("stitchkit_format"),
}


@pytest.mark.parametrize("case", sorted(ENTRY_EDITS))
def test_any_metadata_entry_edit_fails(files, tmp_path, registry, case):
    head, data = raw(files["pool"])
    ENTRY_EDITS[case](head["__metadata__"])
    bad = write(tmp_path / "bad.safetensors", head, data)
    for load in (lambda: read_pool_metadata(bad), lambda: load_pool(bad, registry)):
        with pytest.raises(PoolFormatError, match=r"metadata_sha256|does not go with format|did not write"):
            load()


# --------------------------------------------------------------------------- older files
def test_format_2_files_still_load(registry, tmp_path):
    """Files written by the code before format 3 (tests/fixtures/README.md) load, with one notice each."""
    v2 = FIXTURES / "pool-v2.safetensors"
    expected = load_file(str(FIXTURES / "v2-expected.safetensors"))
    x = expected["images"]
    tol = dict(rtol=1.3e-6, atol=1e-6)  # computed on another machine (see test_format_1_files_still_load)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("stitchkit")
    log.addHandler(handler)
    header._noticed.clear()
    try:
        meta = read_pool_metadata(v2)
        pool = load_pool(v2, registry).eval()
        d = load_exported(FIXTURES / "descendant-v2.safetensors", registry)
    finally:
        log.removeHandler(handler)
    assert meta["format"] == "stitchkit-pool" and meta["format_version"] == "2"
    assert len(lines) == 2 and all("\n" not in line for line in lines)  # one line per file, not per read
    assert "pool-v2.safetensors is a format-2 file, written before metadata digests" in lines[0]
    assert "descendant-v2.safetensors" in lines[1]
    assert pool.stitched_final_norm is False
    with torch.no_grad():
        for i in range(len(pool.paths)):
            torch.testing.assert_close(pool.descendant(i)(x), expected[f"logits.{i}"], **tol)
            lazy = load_descendant(v2, i, registry).eval()
            torch.testing.assert_close(lazy(x), pool.descendant(i)(x), rtol=0, atol=0)
        torch.testing.assert_close(d(x), expected["logits.1"], **tol)
    assert d.classes == DATA["classes"] and d.preprocessing["mean"] == DATA["preprocessing"]["mean"]
    assert verify_data(v2)  # its data checksum still holds
    plain = load_file(str(FIXTURES / "timm-v2.safetensors"))
    arch = json.loads(raw(FIXTURES / "timm-v2.safetensors")[0]["__metadata__"]["stitchkit_arch"])
    vit = VisionTransformer(**{k: v for k, v in arch.items() if k != "timm_name"}).eval()
    vit.load_state_dict(plain)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), expected["logits.0"], **tol)
    # rewriting its evaluation upgrades it to format 3 (digest, format pt), tensor bytes unchanged
    copy = tmp_path / "v2.safetensors"
    copy.write_bytes(v2.read_bytes())
    update_evaluation(copy, {}, merge=True)
    m = raw(copy)[0]["__metadata__"]
    assert (m["format"], m["stitchkit_format"], m["format_version"]) == ("pt", "stitchkit-pool", "3")
    assert m["metadata_sha256"] == digest(m) and raw(copy)[1] == raw(v2)[1]
    assert read_pool_metadata(copy)["pool"] == read_pool_metadata(v2)["pool"]


def test_format_2_model_files_still_load(files, tmp_path, registry):
    """A model file as save_model wrote it before format 3 (kind in 'format', no digest)."""
    head, data = raw(files["model"])
    meta = head["__metadata__"]
    meta.update(format=meta.pop("stitchkit_format"), version="1")
    meta.pop("metadata_sha256")
    old = write(tmp_path / "old.safetensors", head, data)
    assert load_model(old, registry).shape == RowShape(2, 8, 2)
    head["__metadata__"].update(format="pt", stitchkit_format="stitchkit-model")  # format pt without its digest
    with pytest.raises(PoolFormatError, match="has none"):
        load_model(write(tmp_path / "bad.safetensors", head, data), registry)


# --------------------------------------------------------------------------- a pool that cannot be built
def test_a_pool_whose_rows_cannot_be_built_fails_info_verify_and_select(files, tmp_path, capsys, pool):
    """Digest intact (a crafted file) but row 1's arch cannot be built: 16 channels in 3 heads."""
    from stitchkit.cli.main import main

    good = tmp_path / "good.safetensors"
    good.write_bytes(files["pool"].read_bytes())
    update_evaluation(good, {p.name: {"top1": 0.5 + i / 10} for i, p in enumerate(pool.paths)})
    bad = edited(good, tmp_path / "bad.safetensors", "pool", lambda d: d["rows"][1]["arch"].update(num_heads=3), restamp=True)
    assert main(["info", str(bad)]) == 0  # the header alone is fine
    capsys.readouterr()
    for argv in (["info", str(bad), "--verify"], ["select", str(bad), "--max-params", "10000000"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"stitchkit: error: {bad}: row 1: adapter 'timm-vit' cannot build arch") and err.count("\n") == 1, err
    # the untouched pool passes both, and select picks the best stored top-1
    assert main(["info", str(good), "--verify"]) == 0
    assert "verified: every row builds from its arch" in capsys.readouterr().out
    assert main(["select", str(good), "--max-params", "10000000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == pool.paths[-1].name


def test_unusable_preprocessing_in_a_crafted_file_is_a_pool_format_error(files, tmp_path, registry):
    """A digest-valid descendant whose info.data timm cannot use: one error naming the file (hostile battery, round 17)."""
    bad = edited(files["descendant"], tmp_path / "bad.safetensors", "descendant",
                 lambda d: d["info"]["data"]["preprocessing"].update(mean=3), restamp=True)
    with pytest.raises(PoolFormatError, match=r"bad.safetensors: metadata info.data \(preprocessing, classes\) cannot be used"):
        load_exported(bad, registry)
    bad = edited(files["pool"], tmp_path / "bad-pool.safetensors", "pool", lambda d: d["info"]["data"].update(classes=5), restamp=True)
    from stitchkit.apps.hub import export_hf

    with pytest.raises(PoolFormatError, match="info.data must hold"):
        export_hf(bad, 0, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-pool.safetensors", "bad.safetensors"]


def test_a_plain_model_file_loads_with_stitchkit_and_refuses_edits(files, tmp_path, registry, images, pool):
    d = load_exported(files["plain"], registry)
    with torch.no_grad():
        assert torch.equal(d(images), pool.descendant(0)(images))
    assert d.classes == DATA["classes"]
    bad = edited(files["plain"], tmp_path / "bad.safetensors", "stitchkit_descendant",
                 lambda desc: desc["rows"][0]["arch"].update(global_pool="avg"))
    with pytest.raises(PoolFormatError, match="does not match the metadata_sha256"):
        load_exported(bad, registry)
