"""Hostile and clumsy use (issue 12): nothing lost, nothing hangs, no tracebacks.

Every case runs the real command line (``main``, or a subprocess where a
hang is the risk: the runner's timeout is the bound, never a timing
assertion) and checks: exit status 2, exactly one line on stderr, no
traceback, and every input byte-identical afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import tiny_row
from stitchkit.core import limits
from stitchkit.io import storage
from stitchkit.io.header import stamp
from stitchkit.cli.main import main
from stitchkit.core.errors import CheckpointError, ConfigError, FileError, PoolFormatError, StitchkitError
from stitchkit.io.files import OutputLock, atomic_write, sweep_temp_files, temp_path
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.components.sequential import SequentialMethod
from stitchkit.core.spec import Path, RowShape

REG = Registry(load_entrypoints=False)


# --------------------------------------------------------------------------- fixtures and helpers
def make_pool(dtype: torch.dtype = torch.float32) -> Pool:
    """Two rows of depth 2 (widths 16, 32), 3 paths labelled "2", "x", "0" (a label that looks like an index)."""
    rows = [tiny_row(RowShape(2, 16, 2), 0), tiny_row(RowShape(2, 32, 4), 1)]
    method = SequentialMethod()
    stitches = method.stitches([r.shape for r in rows])
    paths = [Path(p.segments, p.stitches, label=label)
             for p, label in zip(method.paths([r.shape for r in rows], stitches), ["2", "x", "0"])]
    pool = Pool(rows, stitches, paths, method="sequential", info={})
    pool.evaluation = {p.name: {"top1": 0.5 + 0.1 * i, "params": 1} for i, p in enumerate(paths)}
    return pool.to(dtype).eval()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("hostile")
    storage.save_pool(make_pool(), d / "pool.safetensors")
    storage.export_descendant(d / "pool.safetensors", 1, d / "desc.safetensors", registry=REG)
    return d


@pytest.fixture()
def pool_file(pool_dir, tmp_path) -> pathlib.Path:
    """A fresh copy per test, so a test that damages it cannot affect another."""
    p = tmp_path / "pool.safetensors"
    p.write_bytes((pool_dir / "pool.safetensors").read_bytes())
    return p


def digest(*paths: pathlib.Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def fails_cleanly(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr and no traceback. Returns that line."""
    assert main(list(argv)) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("stitchkit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def read_raw(path: pathlib.Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: pathlib.Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def craft(src: pathlib.Path, dst: pathlib.Path, fn, key: str = "pool") -> pathlib.Path:
    """Copy ``src`` with its ``key`` metadata edited by ``fn`` (schema-valid, tensors untouched)."""
    header, data = read_raw(src)
    desc = json.loads(header["__metadata__"][key])
    fn(desc)
    header["__metadata__"][key] = json.dumps(desc)
    header["__metadata__"] = stamp(header["__metadata__"])  # a crafted file: its digest matches
    write_raw(dst, header, data)
    return dst


def deep(depth: int):
    """Row 0 claims ``depth`` blocks (arch and row agree), with paths that fit, so only the bounds can catch it."""

    def fn(d: dict) -> None:
        d["rows"][0]["depth"] = d["rows"][0]["arch"]["depth"] = depth
        d["paths"], d["evaluation"] = [{"segments": [[0, 0, depth]], "stitches": []}], {}
        d.pop("sizes", None)  # stored sizes (optional) describe the old paths

    return fn


# --------------------------------------------------------------------------- 1. never destroy an input
@pytest.mark.parametrize("extra", [[], ["--timm"]])
def test_export_onto_its_own_pool_is_refused(capsys, pool_file, extra):
    before = digest(pool_file)
    err = fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(pool_file), *extra)
    assert "refusing to write" in err and "is the input" in err
    assert digest(pool_file) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_export_onto_a_link_to_its_pool_is_refused(capsys, pool_file, link):
    out = pool_file.with_name("out.safetensors")
    (os.symlink if link == "symlink" else os.link)(pool_file, out)
    before = digest(pool_file)
    assert "resolves (symlink or hard link) to" in fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(out))
    assert digest(pool_file) == before
    with pytest.raises(FileError):  # the library refuses too, not only the CLI
        storage.export_timm_state_dict(pool_file, 0, out, registry=REG)
    assert digest(pool_file) == before


def test_onnx_output_onto_an_input_is_refused(capsys, pool_file, tmp_path):
    before = digest(pool_file)
    fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(tmp_path / "d.safetensors"), "--onnx", str(pool_file))
    assert digest(pool_file) == before and not (tmp_path / "d.safetensors").exists()


# --------------------------------------------------------------------------- 2. hangs and blow-ups
@pytest.mark.parametrize("depth", [100_000, 10_000_000])
def test_huge_declared_depth_is_refused_by_every_reader(capsys, pool_file, tmp_path, depth):
    bad = craft(pool_file, tmp_path / "deep.safetensors", deep(depth))
    for argv in (["info", str(bad)], ["select", str(bad), "--max-params", "10"], ["export", str(bad), "0", "-o", str(tmp_path / "o")]):
        err = fails_cleanly(capsys, *argv)
        assert "out of bounds" in err and "MAX_DEPTH" in err
    for read in (storage.read_pool_structure, storage.load_pool, lambda p, r: storage.load_descendant(p, 0, r)):
        with pytest.raises(PoolFormatError, match="MAX_DEPTH"):
            read(bad, REG)
    assert not (tmp_path / "o").exists()


def test_depth_within_limits_but_not_in_the_file_is_refused_before_building(pool_file, tmp_path):
    bad = craft(pool_file, tmp_path / "deep.safetensors", deep(limits.MAX_DEPTH))
    with pytest.raises(PoolFormatError, match=r"declares 256 blocks but the file holds only 32 tensors"):  # stem 4 + 2 blocks x 12 + head 4
        storage.load_pool(bad, REG)


def test_fake_tensors_buy_no_more_construction_than_they_list(pool_file, tmp_path):
    """Zero-size tensors padding the count: the build stops at twice the row's listed tensors."""
    header, data = read_raw(pool_file)
    desc, index = json.loads(header["__metadata__"]["pool"]), json.loads(header["__metadata__"]["tensors"])
    deep(limits.MAX_DEPTH)(desc)
    for i in range(limits.MAX_DEPTH):
        header[f"rows.0.fake.{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [len(data), len(data)]}
        index[f"rows.0.fake.{i}"] = {"dtype": "F32", "shape": [0]}
    header["__metadata__"].update(pool=json.dumps(desc), tensors=json.dumps(index))
    header["__metadata__"] = stamp(header["__metadata__"])
    write_raw(tmp_path / "fake.safetensors", header, data)
    with pytest.raises(PoolFormatError, match=r"row 0: its arch builds far more tensors than the file holds for it \(288\)"):
        storage.load_pool(tmp_path / "fake.safetensors", REG)  # 288 = 32 real + 256 fake


def test_exported_descendant_with_a_huge_segment_is_refused(pool_dir, tmp_path):
    def fn(d: dict) -> None:
        d["path"]["segments"][-1][2] = 10**7
        for row in d["rows"]:
            row["depth"] = row["arch"]["depth"] = 10**7

    bad = craft(pool_dir / "desc.safetensors", tmp_path / "d.safetensors", fn, key="descendant")
    with pytest.raises(PoolFormatError, match="MAX_DEPTH"):
        storage.load_exported(bad, REG)


def test_a_fifo_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "pool.safetensors"
    os.mkfifo(fifo)
    commands = [["info", str(fifo)], ["export", str(fifo), "0", "-o", str(tmp_path / "o.safetensors")],
                ["select", str(fifo), "--max-params", "1"], ["info", "--verify", str(fifo)]]
    code = ("import sys; from stitchkit.cli.main import main; "
            f"sys.exit(sum(main(a) != 2 for a in {commands!r}))")
    # one subprocess for all four (one interpreter start); a blocking open would hit the runner's timeout
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 4 and all("FIFO" in line for line in lines), done.stderr
    with pytest.raises(PoolFormatError, match="FIFO"):
        storage.load_pool(fifo, REG)
    assert "FIFO" in fails_cleanly(capsys, "build", str(fifo))  # a config: stat before open too


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null"])
def test_devices_are_refused(capsys, pool_file, special):
    if not os.path.exists(special):
        pytest.fail(f"{special} missing on this system")
    assert "device" in fails_cleanly(capsys, "info", special)
    before = os.stat(special)
    assert "device" in fails_cleanly(capsys, "export", str(pool_file), "0", "-o", special)  # as root, a rename would replace it
    with pytest.raises(FileError, match="regular files only"):
        storage.save_pool(make_pool(), special)
    after = os.stat(special)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


def test_onnx_and_output_naming_one_file(capsys, pool_file, tmp_path):
    out = tmp_path / "same"
    assert "same file" in fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(out), "--onnx", str(out))
    assert not out.exists()


@pytest.mark.parametrize("rows", ["1000000x96:3", "10000x96:3", "257x96:3", "2x96:3,2x1000000:3", "2x96:3000", "99999999999999999999999x96:3",
                                  ",".join(["2x96:3"] * 65)])
def test_plan_rows_beyond_the_limits(capsys, rows):
    err = fails_cleanly(capsys, "plan", "--ancestry", "deit_tiny_patch16_224", "--rows", rows)
    assert "stitchkit.core.limits" in err


def test_build_with_a_huge_model_fails_before_any_phase(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "sequential"\n[data]\nsource = "synthetic"\n')
    for setting in ("model.depth=1000000", "model.embed_dim=1000000", "train.lr=nan", "train.lr=inf", "train.batch_size=100000000"):
        fails_cleanly(capsys, "build", str(cfg), "--set", setting, "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 3. silently wrong results
@pytest.fixture()
def finished_phase(tmp_path):
    from stitchkit.engine import ClassificationTask, DataConfig, TrainConfig, build_data, fit
    from stitchkit.families.vit import TimmViT

    data = build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=40, synthetic_classes=4))
    train = TrainConfig(epochs=1, batch_size=16, lr=1e-3, device="cpu", max_steps=2, progress=False)

    def run():
        torch.manual_seed(0)
        model = TimmViT.from_arch({"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 4, "embed_dim": 16, "depth": 1, "num_heads": 2})
        return fit(ClassificationTask(model.model), data, train, out_dir=tmp_path, phase="p", config={"x": 1})

    run()
    return run, sorted((tmp_path / "p" / "checkpoints").glob("step-*.json"))[-1]


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("step", 1000),
    lambda m: m.__setitem__("finished", False),
    lambda m: m["rng"].__setitem__("world_size", 7),
    lambda m: m["rng"]["numpy"].__setitem__("pos", 3),
])
def test_an_edited_checkpoint_json_is_refused(finished_phase, edit):
    run, meta_path = finished_phase
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="integrity"):
        run()


@pytest.mark.parametrize("field,value", [("step", "2"), ("finished", 1), ("rng", {"world_size": 1}), ("weights", "../x.safetensors")])
def test_a_checkpoint_json_of_the_wrong_types_is_refused_even_with_a_matching_hash(finished_phase, field, value):
    from stitchkit.engine.checkpoint import _integrity

    run, meta_path = finished_phase
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta["integrity"] = _integrity(meta)  # a forger who recomputes the hash still fails the type checks
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=field):
        run()


def test_a_second_writer_on_one_output_directory_fails_at_once(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "learngene-pool"\n[data]\nsource = "synthetic"\n')
    out = tmp_path / "out"
    with OutputLock(out, "test holder"):
        if "learngene-pool" not in Registry().list("method"):
            pytest.fail("the learngene-pool plugin is not installed")
        err = fails_cleanly(capsys, "build", str(cfg), "--out", str(out))
        assert str(out) in err and f"pid {os.getpid()}" in err and "in use" in err
        err = fails_cleanly(capsys, "demo", "--out", str(out))
        assert f"pid {os.getpid()}" in err
    OutputLock(out).acquire().release()  # released with its holder


def test_a_killed_holder_releases_the_lock(tmp_path):
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies without releasing it
        OutputLock(tmp_path, "child").acquire()
        os.kill(os.getpid(), 9)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    OutputLock(tmp_path).acquire().release()


# --------------------------------------------------------------------------- 4. OS errors and bad metadata are one line
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EXDEV, errno.EIO])
def test_os_errors_while_writing_are_one_line_and_leave_nothing_behind(capsys, pool_file, tmp_path, monkeypatch, code):
    out = tmp_path / "x" / "d.safetensors"

    def fail(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", fail)
    err = fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(out))
    assert str(out) in err and os.strerror(code) in err
    assert list((tmp_path / "x").iterdir()) == []  # the temp file is gone


def test_out_that_is_a_file_and_output_that_is_a_directory(capsys, pool_file, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('method = "sequential"\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(blocker / "d.safetensors"))
    assert str(blocker) in fails_cleanly(capsys, "build", str(cfg), "--out", str(blocker))
    assert "is a directory" in fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(tmp_path))
    assert blocker.read_text() == "x"


BAD_METADATA = {
    "heads not dividing the width": lambda d: d["rows"][0]["arch"].__setitem__("num_heads", 3),
    "img_size 10^6": lambda d: d["rows"][0]["arch"].__setitem__("img_size", [10**6, 10**6]),
    "mlp_ratio a string": lambda d: d["rows"][0]["arch"].__setitem__("mlp_ratio", "four"),
    "mlp_ratio 10^9": lambda d: d["rows"][0]["arch"].__setitem__("mlp_ratio", 1e9),
    "embed_dim 10^7": lambda d: d["rows"][0]["arch"].__setitem__("embed_dim", 10**7),
    "top1 a string": lambda d: next(iter(d["evaluation"].values())).__setitem__("top1", "high"),
    "arch nested 100 deep": lambda d: d["rows"][0]["arch"].__setitem__("x", json.loads("[" * 100 + "]" * 100)),
    "300k paths": lambda d: d.__setitem__("paths", d["paths"] * 100_000),
    "an unknown adapter": lambda d: d["rows"][0].__setitem__("adapter", "nope"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_inconsistent_metadata_is_a_one_line_pool_format_error(capsys, pool_file, tmp_path, case):
    bad = craft(pool_file, tmp_path / "bad.safetensors", BAD_METADATA[case])
    with pytest.raises(PoolFormatError):
        storage.load_pool(bad, REG)  # the whole pool is rebuilt: refused, naming the file
    # info and select read stored sizes, export builds only its descendant's (shortened) rows: a part
    # they do not build may pass them, but they never crash, and what they check fails as one line naming the file
    out = tmp_path / "d.safetensors"
    for argv in (["info", str(bad)], ["select", str(bad), "--max-params", "100000000"], ["export", str(bad), "1", "-o", str(out)]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2) and err.count("\n") == (code == 2) and "Traceback" not in err
        assert code == 0 or str(bad) in err


@pytest.mark.parametrize("argv", [
    ["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3", "--img-size", "0"],
    ["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3", "--img-size", "-224"],
    ["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3", "--img-size", "1000000"],
    ["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3", "--img-size", "30"],
    ["plan", "--ancestry", "deit_tiny_patch16_224", "--rows", "2x96:3", "--num-classes", "-5"],
    ["plan", "--ancestry", "resnet18", "--rows", "2x96:3"],
    ["select", "POOL", "--max-latency-ms", "10", "--batch-size", "-4"],
    ["select", "POOL", "--max-latency-ms", "10", "--batch-size", "100000000"],
    ["select", "POOL", "--max-params", "10000000", "--batch-size", "0"],
    ["select", "POOL", "--max-latency-ms", "10", "--device", "quantum"],
    ["select", "POOL", "--max-latency-ms", "nan"],
    ["select", "POOL", "--max-latency-ms", "-1"],
    ["select", "POOL", "--max-params", "-5"],
    ["demo", "--threads", "-1", "--out", "OUT"],
    ["demo", "--set", "demo.rows=banana", "--out", "OUT"],
    ["demo", "--set", "train.lr=inf", "--out", "OUT"],
    ["demo", "--set", "train.lr=nan", "--out", "OUT"],
])
def test_bad_command_line_values(capsys, pool_file, tmp_path, argv):
    argv = [str(pool_file) if a == "POOL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    fails_cleanly(capsys, *argv)
    assert not (tmp_path / "out").exists()  # refused before the first phase


@pytest.mark.parametrize("method,section", [("learngene-pool", "learngene"), ("snnet", "snnet"), ("snnetv2", "snnetv2")])
@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_pool_file_must_stay_in_the_output_directory(capsys, tmp_path, method, section, name):
    cfg = tmp_path / "c.toml"
    extra = f'[[{section}.anchors]]\nshape = "2x16:2"\ntrain = true\n' if section != "learngene" else ""
    cfg.write_text(f'method = "{method}"\n[data]\nsource = "synthetic"\n[{section}]\npool_file = "{name}"\n{extra}')
    assert "pool_file" in fails_cleanly(capsys, "build", str(cfg), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_config_nested_100000_deep_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "deep.json"
    cfg.write_text('{"method": "sequential", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert "nests" in fails_cleanly(capsys, "build", str(cfg))


def test_onnx_without_the_package_writes_nothing(capsys, pool_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    out = tmp_path / "d.safetensors"
    assert "onnx package" in fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(out), "--onnx", str(tmp_path / "d.onnx"))
    assert not out.exists()


# --------------------------------------------------------------------------- 6. the small ones
def test_files_follow_the_umask_and_rewrites_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        p = storage.save_pool(make_pool(), tmp_path / "a.safetensors")
        assert p.stat().st_mode & 0o777 == 0o640
        os.chmod(p, 0o604)
        storage.update_evaluation(p, {0: {"top1": 1.0}})
        assert p.stat().st_mode & 0o777 == 0o604
    finally:
        os.umask(old)


def test_temp_files_of_a_killed_writer_are_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, timeout=120)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".pool.safetensors.{dead_pid}-0123abcd.tmp"
    live = tmp_path / f".pool.safetensors.{os.getppid()}-0123abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for p in (stale, live, other):
        p.write_text("x")
    atomic_write(tmp_path / "new.bin", lambda tmp: pathlib.Path(tmp).write_bytes(b"ok"))
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "new.bin").read_bytes() == b"ok"
    assert temp_path(tmp_path / "x").name.startswith(f".x.{os.getpid()}-")
    assert sweep_temp_files(tmp_path / "missing") == []


def test_a_failed_write_removes_its_temp_file(tmp_path):
    def boom(tmp: str) -> None:
        pathlib.Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError):
        atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_data_checksum_catches_a_flipped_weight_bit(capsys, pool_file):
    assert main(["info", str(pool_file), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    header, data = read_raw(pool_file)
    stored = header["__metadata__"]["data_sha256"]
    assert stored == hashlib.sha256(data).hexdigest()  # what docs/format.md says it is
    raw = bytearray(pool_file.read_bytes())
    raw[-5] ^= 0x01
    pool_file.write_bytes(bytes(raw))
    storage.load_pool(pool_file, REG)  # structurally fine: only the checksum sees it
    assert "does not match the checksum" in fails_cleanly(capsys, "info", str(pool_file), "--verify")
    with pytest.raises(PoolFormatError, match="checksum"):
        storage.load_pool(pool_file, REG, verify=True)


def test_update_evaluation_keeps_a_valid_checksum(pool_file):
    storage.update_evaluation(pool_file, {"x": {"top1": 0.9}}, merge=True)
    assert storage.verify_data(pool_file) == read_raw(pool_file)[0]["__metadata__"]["data_sha256"]


def test_descendant_keys_labels_before_indices(capsys, pool_file, tmp_path):
    pool = make_pool()
    assert pool.path("0") == pool.paths[2]  # the label "0"
    assert pool.path("#0") == pool.paths[0] and pool.path(0) == pool.paths[0]
    assert pool.path("2") == pool.paths[0] and pool.path("1") == pool.paths[1]  # label "2"; "1" is no label: index
    out = tmp_path / "d.safetensors"
    assert main(["export", str(pool_file), "0", "-o", str(out)]) == 0
    assert storage.read_descendant_metadata(out)["descendant"]["name"] == pool.paths[2].name
    fails_cleanly(capsys, "export", str(pool_file), "#7", "-o", str(out))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_bf16_and_float64_pools_measure_and_report(capsys, tmp_path, dtype):
    p = storage.save_pool(make_pool(dtype), tmp_path / "pool.safetensors")
    assert main(["select", str(p), "--max-latency-ms", "100000", "--device", "cpu", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["index"] == 2 and row["latency_ms"] > 0  # the best stored top1
    assert main(["info", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    float_pool = make_pool()
    assert [d["macs"] for d in info["descendants"]] == [c["macs"] for c in float_pool.costs()]
    parts = make_pool(dtype).part_macs()  # on the pool's own dtype, not float32 inputs
    assert parts == float_pool.part_macs()


# --------------------------------------------------------------------------- hypothesis: any edit of the numbers
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3),
                    st.none(), st.booleans(), st.lists(st.integers(0, 10**7), max_size=3))
KEYS = ["depth", "embed_dim", "num_heads", "img_size", "patch_size", "num_classes", "mlp_ratio", "in_chans", "reg_tokens"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.integers(0, 1), key=st.sampled_from(KEYS), value=NUMBERS, where=st.sampled_from(["arch", "row"]))
def test_any_edited_number_is_loaded_or_refused_as_a_pool_format_error(pool_dir, tmp_path_factory, row, key, value, where):
    def fn(d: dict) -> None:
        target = d["rows"][row]["arch"] if where == "arch" else d["rows"][row]
        target[{"embed_dim": "width", "num_heads": "heads"}.get(key, key) if where == "row" else key] = value

    bad = craft(pool_dir / "pool.safetensors", tmp_path_factory.mktemp("h") / "p.safetensors", fn)
    try:
        pool = storage.load_pool(bad, REG)
    except PoolFormatError:
        return
    # accepted: then it is exactly the stored pool (the edit was a no-op for the weights, e.g. "reg_tokens": 0 -> 0)
    assert storage.load_pool(pool_dir / "pool.safetensors", REG).state_dict().keys() == pool.state_dict().keys()


def test_the_limits_are_documented():
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "format.md").read_text()
    for name in ("MAX_ROWS", "MAX_DEPTH", "MAX_TOTAL_BLOCKS", "MAX_JSON_CONTAINERS", "MAX_WIDTH", "MAX_HEADS", "MAX_IMG_SIZE", "MAX_IMAGE_PIXELS", "MAX_CLASSES", "MAX_PATHS", "MAX_STITCHES",
                 "MAX_BATCH_SIZE", "MAX_ARCH_INT"):
        assert f"`{name}` | {getattr(limits, name):,}" in doc, name


def test_errors_are_stitchkit_errors():
    assert issubclass(FileError, StitchkitError) and issubclass(limits.LimitError, ConfigError)


def test_a_forged_optimizer_state_is_a_checkpoint_error(finished_phase):
    from stitchkit.engine.checkpoint import _integrity

    run, meta_path = finished_phase
    meta = json.loads(meta_path.read_text())
    meta["finished"] = False
    meta["optimizer"]["param_groups"] = [{"params": "all"}]
    meta["integrity"] = _integrity(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        run()
