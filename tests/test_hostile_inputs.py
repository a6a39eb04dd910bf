"""Hostile inputs, second round (issue 24): bad image folders, foreign checkpoints, values no one meant, half-written outputs.

Each case is the user's view, as in ``tests/test_hostile.py``: the real
command line (``main``, or a subprocess where the process's own exit matters),
exit status 2 with exactly one line on stderr naming the file, key or path,
and every input byte-identical afterwards; or the right result.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from stitchkit.cli.main import SIGPIPE_STATUS, main
from stitchkit.core.errors import PoolFormatError, StitchkitError
from stitchkit.io import onnx_export, storage
from stitchkit.io.importing import check_weights
from test_hostile import REG, digest, fails_cleanly, make_pool
from test_snnet_import import anchors, official_state

SRC = pathlib.Path(__file__).resolve().parents[1]
ANCHORS = "2x16:2,2x32:4,2x64:8"  # the three miniature anchors of test_snnet_import, depth 2


@pytest.fixture()
def pool_file(tmp_path) -> pathlib.Path:
    return storage.save_pool(make_pool(), tmp_path / "pool.safetensors")


# --------------------------------------------------------------------------- the command line itself
@pytest.mark.parametrize("where", ["before", "after-command", "last"])
def test_traceback_is_accepted_anywhere_on_the_command_line(capsys, tmp_path, where):
    missing = str(tmp_path / "missing.safetensors")
    argv = {"before": ["--traceback", "info", missing], "after-command": ["info", "--traceback", missing],
            "last": ["info", missing, "--traceback"]}[where]
    with pytest.raises(PoolFormatError, match="pool file not found"):  # the exception itself: its traceback is shown
        main(argv)
    assert "pool file not found" in fails_cleanly(capsys, "info", missing)  # and without the flag, one line


def test_traceback_is_listed_in_every_commands_help(capsys):
    for command in ("info", "export", "import", "build", "select", "plan", "cost", "plugins", "demo", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--traceback" in capsys.readouterr().out, command


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """Run the CLI with stdout a pipe whose reader is already gone: every write to it fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC / "src"), str(SRC / "plugins"), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-m", "stitchkit.cli", *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=300, env=env)
    finally:
        os.close(w)


def test_a_closed_output_pipe_ends_quietly_with_the_sigpipe_status(pool_file):
    done = _run_into_closed_pipe("info", str(pool_file))
    assert done.returncode == SIGPIPE_STATUS == 128 + 13
    assert done.stderr == ""  # no "Broken pipe" line, no "Exception ignored" at exit
    done = _run_into_closed_pipe("info", str(pool_file) + ".missing")  # an error still reaches stderr
    assert done.returncode == 2 and done.stderr.startswith("stitchkit: error: ") and done.stderr.count("\n") == 1


def test_a_failed_onnx_write_removes_the_export_and_names_the_users_path(capsys, pool_file, tmp_path, monkeypatch):
    out, onnx = tmp_path / "d.safetensors", tmp_path / "ro" / "d.onnx"

    def read_only(model, args, f, **kw):  # what a read-only target gives: the temp file cannot be created
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), f)

    monkeypatch.setattr(onnx_export.torch.onnx, "export", read_only)
    before = digest(pool_file)
    err = fails_cleanly(capsys, "export", str(pool_file), "0", "-o", str(out), "--onnx", str(onnx))
    assert err == f"stitchkit: error: {onnx}: {os.strerror(errno.EROFS)}; the file system is read-only; choose another location\n"
    assert ".tmp" not in err
    assert not out.exists() and list((tmp_path / "ro").iterdir()) == []  # neither output, no temp file
    assert digest(pool_file) == before


def test_an_onnx_model_that_disagrees_with_pytorch_is_never_written(pool_file, tmp_path):
    desc = storage.export_descendant(pool_file, 0, tmp_path / "d.safetensors", registry=REG)
    with pytest.raises(StitchkitError, match="differs from PyTorch by .* nothing was written there"):
        onnx_export.export_onnx(desc, tmp_path / "d.onnx", atol=-1.0)  # every difference is beyond a negative tolerance
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "pool.safetensors"]
    assert onnx_export.export_onnx(desc, tmp_path / "d.onnx") is not None  # the same export within tolerance is written
    assert (tmp_path / "d.onnx").stat().st_size > 0


# --------------------------------------------------------------------------- import refuses what export refuses
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[dict[str, torch.Tensor], pathlib.Path]:
    state = official_state(anchors(2), 2, nearest=True)
    path = tmp_path_factory.mktemp("official") / "checkpoint.pth"
    torch.save({"model": state}, path)
    return state, path


def _edited(state: dict, tmp_path: pathlib.Path, key: str, edit) -> pathlib.Path:
    bad = dict(state)
    bad[key] = edit(bad[key].clone())
    path = tmp_path / "edited.pth"
    torch.save({"model": bad}, path)
    return path


def _nan_at(index):
    def edit(t):
        t.view(-1)[index] = float("nan")
        return t
    return edit


def _inf(t):
    t.view(-1)[1] = float("-inf")
    return t


@pytest.mark.parametrize("key, edit, problem", [
    ("anchors.1.blocks.0.attn.qkv.weight", _nan_at(0), "holds 1 non-finite value(s) (NaN or Inf) of 3072"),
    ("anchors.0.pos_embed", _nan_at(slice(0, 5)), "holds 5 non-finite value(s) (NaN or Inf) of 80"),
    ("stitch_layers.0.0.transform.bias", _inf, "holds 1 non-finite value(s) (NaN or Inf) of 32"),
    ("stitch_layers.1.0.transform.weight", lambda t: t.to(torch.int32), "is stored as int32, not as a float tensor"),
    ("anchors.2.head.weight", lambda t: t.to(torch.int64), "is stored as int64, not as a float tensor"),
])
def test_import_refuses_non_finite_and_non_float_weights_naming_the_key(capsys, checkpoint, tmp_path, key, edit, problem):
    bad = _edited(checkpoint[0], tmp_path, key, edit)
    out = tmp_path / "pool.safetensors"
    before = digest(bad)
    err = fails_cleanly(capsys, "import", "snnet", str(bad), "--anchors", ANCHORS, "-o", str(out))
    assert err.startswith(f"stitchkit: error: {bad}: {key} {problem}")
    assert not out.exists() and digest(bad) == before


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_import_refuses_an_output_that_is_or_links_to_the_checkpoint(capsys, checkpoint, tmp_path, link):
    ck = tmp_path / "ck.pth"
    ck.write_bytes(checkpoint[1].read_bytes())
    out = ck if link == "same" else tmp_path / "out.safetensors"
    if link != "same":
        (os.symlink if link == "symlink" else os.link)(ck, out)
    before = digest(ck)
    err = fails_cleanly(capsys, "import", "snnet", str(ck), "--anchors", ANCHORS, "-o", str(out))
    assert "refusing to write: the -o output" in err and f"the input {ck}" in err
    assert digest(ck) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted({"ck.pth", out.name})


def test_import_checks_run_before_anything_is_written(capsys, checkpoint, tmp_path):
    """A bad checkpoint leaves an existing output as it was (the checks come before the write)."""
    bad = _edited(checkpoint[0], tmp_path, "anchors.0.cls_token", _nan_at(0))
    out = tmp_path / "old.safetensors"
    out.write_bytes(b"an earlier result")
    fails_cleanly(capsys, "import", "snnet", str(bad), "--anchors", ANCHORS, "-o", str(out))
    assert out.read_bytes() == b"an earlier result"
    assert main(["import", "snnet", str(checkpoint[1]), "--anchors", ANCHORS, "-o", str(out)]) == 0  # the good one imports
    assert "11 descendants on 2 stitch layers" in capsys.readouterr().out


def test_the_core_checks_any_methods_imported_weights():
    """What a third-party method's import lets through is caught by the pool key it got."""
    pool = make_pool()
    check_weights(pool, "ck.pth")  # a finite float pool passes
    with torch.no_grad():
        pool.stitches["s0_1_1"].weight[0, 0] = float("inf")
    with pytest.raises(PoolFormatError, match=r"^ck.pth: imports stitches.s0_1_1.weight with 1 non-finite value\(s\)"):
        check_weights(pool, "ck.pth")
