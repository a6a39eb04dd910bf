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


# --------------------------------------------------------------------------- image folders that cannot lie
def _images(folder: pathlib.Path, classes=("a", "b", "c"), n: int = 10, size: int = 12) -> list[pathlib.Path]:
    """``n`` random-noise PNGs per class folder (what a model can only memorise, never learn)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = folder / cls / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
            out.append(path)
    return out


def _train_config(tmp_path: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    cfg = tmp_path / "train.toml"
    cfg.write_text(
        f'[data]\nsource = "imagefolder"\nroot = "{root}"\nin_chans = 3\nimg_size = 8\n'
        '[model]\ndepth = 1\nembed_dim = 16\nnum_heads = 2\npatch_size = 4\n'
        '[train]\nepochs = 1\nbatch_size = 8\nprogress = false\neval_every = 0\n'
    )
    return cfg


def _folder_data(root: pathlib.Path, **kw):
    from stitchkit.engine.data import DataConfig, build_data

    return build_data(DataConfig(source="imagefolder", root=str(root), in_chans=3, img_size=8, **kw))


def _real_paths(ds) -> list[str]:
    """The real file behind each item of a split (through Subset and EpochSeeded)."""
    from torch.utils.data import Subset

    ds = getattr(ds, "base", ds)
    if isinstance(ds, Subset):
        return [os.path.realpath(ds.dataset.samples[i][0]) for i in ds.indices]
    return [os.path.realpath(p) for p, _ in ds.samples]


def test_a_symlink_loop_is_walked_once_and_no_file_lands_in_two_splits(tmp_path, caplog):
    files = _images(tmp_path / "data")
    os.symlink("..", tmp_path / "data" / "a" / "loop")  # the issue's `ln -s .. data/a/loop`: 738 + 246 images before
    with caplog.at_level("WARNING", logger="stitchkit"):
        d = _folder_data(tmp_path / "data")
    parts = {name: _real_paths(ds) for name, ds in (("train", d.train), ("val", d.val), ("test", d.test))}
    assert sorted(p for part in parts.values() for p in part) == sorted(str(f.resolve()) for f in files)  # 30, each once
    assert [len(p) for p in parts.values()] == [21, 3, 6]  # 30 images: round(0.2 * 30) test, round(0.1 * 30) val
    assert "1 directory link(s) lead to a folder walked already" in caplog.text and "a/loop" in caplog.text


def test_a_symlinked_duplicate_is_counted_once_and_never_in_two_splits(tmp_path, caplog):
    files = _images(tmp_path / "data")
    for i in range(10):  # a second name for every image of class b, in class b (symlinks) ...
        os.symlink(files[10 + i], tmp_path / "data" / "b" / f"copy{i}.png")
    os.link(files[0], tmp_path / "data" / "a" / "hard.png")  # ... and a hard link in class a
    with caplog.at_level("WARNING", logger="stitchkit"):
        d = _folder_data(tmp_path / "data", val_fraction=0.3, test_fraction=0.3)
    parts = [set(_real_paths(ds)) for ds in (d.train, d.val, d.test)]
    assert sum(map(len, parts)) == 30 and set.union(*parts) == {str(f.resolve()) for f in files}
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert "11 image path(s) are a second name of a file counted already" in caplog.text


def test_the_same_file_in_two_split_folders_or_two_classes_is_refused(capsys, tmp_path):
    files = _images(tmp_path / "data" / "train")
    _images(tmp_path / "data" / "val", n=2)
    os.symlink(files[3], tmp_path / "data" / "val" / "a" / "leak.png")  # a training image in val/
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "data")), "--out", str(tmp_path / "run"))
    assert f"{tmp_path / 'data' / 'val' / 'a' / 'leak.png'} and {files[3]} are the same file in two splits" in err
    assert not (tmp_path / "run" / "ancestry.safetensors").exists()
    flat = tmp_path / "flat"
    files = _images(flat)
    os.link(files[0], flat / "b" / "also-b.png")  # one file, two labels
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, flat)), "--out", str(tmp_path / "run"))
    assert f"{flat / 'b' / 'also-b.png'} and {files[0]} are the same file in classes 'b' and 'a'" in err


def test_fewer_than_two_classes_is_a_config_error(capsys, tmp_path):
    _images(tmp_path / "one", classes=("only",))
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "one")), "--out", str(tmp_path / "run"))
    assert "has 1 class folder(s) (only); a classifier needs at least two" in err
    _images(tmp_path / "two", classes=("a", "b"))
    (tmp_path / "two" / "c").mkdir()  # an empty class would never be predicted
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "two")), "--out", str(tmp_path / "run"))
    assert f"class folder {tmp_path / 'two' / 'c'} holds no image" in err


def _truncated_jpeg(path: pathlib.Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bomb_png(path: pathlib.Path, width: int = 10_000) -> None:
    """A PNG whose header claims ``width`` x 10,000 pixels (100M > MAX_IMAGE_PIXELS) in a file of a few KB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * 10_001 * 400, 9)  # the first rows only: the header is what counts
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 10_000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("bad, problem", [
    (_truncated_jpeg, "is not a readable image"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "is not a readable image"),
    (lambda p: p.write_bytes(p.with_name("0.png").read_bytes()[:-30]), "is not a readable image"),  # a truncated PNG
    (_bomb_png, "10000x10000 = 100,000,000 pixels, over 67,108,864 (stitchkit.core.limits.MAX_IMAGE_PIXELS"),
    (lambda p: _bomb_png(p, 40_000), "is over 67,108,864 pixels (stitchkit.core.limits.MAX_IMAGE_PIXELS; PIL: Image size (400000000"),
])
def test_a_bad_image_is_one_line_naming_it_before_any_training(capsys, tmp_path, bad, problem):
    _images(tmp_path / "data", n=9)
    # image 9 of class c: with 27 training images in batches of 8, it would sit in the dropped partial batch
    path = tmp_path / "data" / "c" / ("9.jpg" if bad is _truncated_jpeg else "9.png")
    bad(path)
    before = digest(path)
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "data")), "--out", str(tmp_path / "run"),
                        "--set", "data.val_fraction=0", "--set", "data.test_fraction=0")
    assert err.startswith(f"stitchkit: error: data.root: {path}") and problem in err
    assert not (tmp_path / "run" / "train").exists() and not (tmp_path / "run" / "ancestry.safetensors").exists()
    assert digest(path) == before


def test_a_good_folder_with_links_trains(capsys, tmp_path):
    _images(tmp_path / "data" / "train", n=8)
    _images(tmp_path / "data" / "val", n=2)
    os.symlink("../..", tmp_path / "data" / "train" / "b" / "up")  # a loop through the root: walked once, warned
    assert main(["train", str(_train_config(tmp_path, tmp_path / "data")), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "ancestry.safetensors").exists()


# --------------------------------------------------------------------------- bounds on every option
LEARNGENE = """
method = "learngene-pool"
[data]
source = "digits"
img_size = 8
in_chans = 1
[model]
depth = 4
embed_dim = 32
num_heads = 2
patch_size = 2
[train]
batch_size = 32
progress = false
eval_every = 0
[learngene]
rows = "2x16:2,2x32:2"
ancestry_train = { max_steps = 1 }
distill = { max_steps = 1 }
finetune = { max_steps = 1 }
"""

SNNETV2 = """
method = "snnetv2"
[data]
source = "digits"
img_size = 8
in_chans = 1
[train]
batch_size = 32
max_steps = 1
progress = false
[snnetv2]
init_images = 40
stitch_rank = 8
[snnetv2.finetune]
max_steps = 1
[[snnetv2.anchors]]
shape = "2x64:2"
patch_size = 4
train = true
[[snnetv2.anchors]]
shape = "2x128:4"
patch_size = 4
train = true
"""


def _build_fails(capsys, tmp_path, config: str, *settings: str) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    argv = ["build", str(cfg), "--out", str(tmp_path / "out")]
    for s in settings:
        argv += ["--set", s]
    err = fails_cleanly(capsys, *argv)
    trained = [p for p in (tmp_path / "out").rglob("*") if p.suffix in (".safetensors", ".pt") or p.name == "checkpoints"]
    assert trained == []  # refused before any phase trained or wrote
    return err


@pytest.mark.parametrize("setting, words", [
    ("learngene.stitch_rank=1000", "learngene.stitch_rank = 1000 is above the rank of stitch layer s0_1_1 (16 -> 32 channels, at most 16)"),
    ("learngene.stitch_rank=17", "learngene.stitch_rank = 17 is above the rank of stitch layer s0_1_1 (16 -> 32 channels, at most 16)"),
    ("learngene.loss_args.layout=3", "learngene.loss_args.layout = 3: the layout is the ancestry adapter's feature layout"),
    ('learngene.loss_args.layout="map"', "learngene.loss_args.layout = 'map': the layout is the ancestry adapter's"),
    ('learngene.loss_args.reduction="median"', "learngene.loss_args.reduction must be one of sum-classes, mean, got 'median'"),
    ('learngene.prediction_reduction="median"', "learngene.prediction_reduction must be one of sum-classes, mean, got 'median'"),
    ('learngene.paths="zigzag"', "learngene.paths must be one of"),
])
def test_learngene_option_bounds_fail_in_the_pre_flight_check(capsys, tmp_path, setting, words):
    assert words in _build_fails(capsys, tmp_path, LEARNGENE, setting)


@pytest.mark.parametrize("setting, words", [
    ("snnetv2.stitch_rank=1000", "snnetv2.stitch_rank = 1000 is above the rank of stitch layer s0_1_0 (64 -> 128 channels, at most 64)"),
    ('snnetv2.routes=["sl", "zz"]', "snnetv2.routes: give a non-empty list among sl, ls, lsl, sls, got ['sl', 'zz']"),
    ("snnetv2.routes=[]", "snnetv2.routes: give a non-empty list among"),
])
def test_snnetv2_option_bounds_fail_before_any_anchor_trains(capsys, tmp_path, setting, words):
    assert words in _build_fails(capsys, tmp_path, SNNETV2, setting)


def test_stitch_rank_bound_and_full_rank_note_by_hand():
    """64 -> 128 channels: rank 64 is full rank (noted), 65 has nothing more to express (refused), 63 is low rank."""
    from stitchkit.core.errors import ConfigError
    from stitchkit.core.spec import StitchSpec
    from stitchkit.pool.lowrank import LowRankLinear, check_rank

    specs = [StitchSpec("s0_1_0", 0, 1, 64, 128), StitchSpec("s1_0_0", 1, 0, 128, 64), StitchSpec("s0_2_0", 0, 2, 64, 256)]
    assert check_rank(63, specs) == [] and check_rank(0, specs) == []
    (note,) = check_rank(64, specs, "snnetv2.stitch_rank")
    assert note.startswith("snnetv2.stitch_rank = 64 is the full rank of 3 stitch layer(s) (e.g. s0_1_0)")
    with pytest.raises(ConfigError, match=r"snnetv2.stitch_rank = 65 is above the rank of stitch layer s0_1_0 \(64 -> 128 channels, at most 64\)"):
        check_rank(65, specs, "snnetv2.stitch_rank")
    # what the bound prevents, counted by hand: rank r on a 64 -> 64 layer adds r * (64 + 64) update parameters
    # to the 64 * 64 + 64 of the layer; at r = 1000, 31 times the layer itself
    layer = LowRankLinear(64, 64, rank=1000)
    assert sum(p.numel() for p in layer.parameters()) == 1000 * 128 + 64 * 64 + 64
    with pytest.raises(ConfigError, match="above the rank of stitch layer s0_1_1 \\(16 -> 32 channels, at most 16\\)"):
        from stitchkit.components.sequential import SequentialMethod
        from stitchkit.pool.pool import Pool
        from helpers import tiny_row
        from stitchkit.core.spec import RowShape

        Pool.from_method(SequentialMethod(), [tiny_row(RowShape(2, 16, 2), 0), tiny_row(RowShape(2, 32, 4), 1)], stitch_rank=17)


def test_a_bad_layout_is_refused_by_the_loss_itself():
    from stitchkit.core.errors import ConfigError
    from stitchkit.core.spec import RowShape
    from stitchkit_learngene.losses import BlockLoss, LearngeneDistillation

    with pytest.raises(ConfigError, match="block distillation: layout must be one of tokens, nhwc, map .* got 3"):
        BlockLoss.for_models(RowShape(4, 32, 2), RowShape(2, 16, 2), layout=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="layout must be one of tokens, nhwc, map"):
        LearngeneDistillation(RowShape(4, 32, 2), RowShape(2, 16, 2), layout="channels")
    assert BlockLoss.for_models(RowShape(4, 32, 2), RowShape(2, 16, 2), layout="map").layout == "map"


def test_a_full_rank_stitch_rank_is_noted_in_the_pre_flight_check(tmp_path, caplog):
    from stitchkit.core.registry import default_registry
    from stitchkit.engine.settings import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(LEARNGENE)
    config = load_config(cfg, ["learngene.stitch_rank=16"])
    with caplog.at_level("WARNING", logger="stitchkit"):
        default_registry().method("learngene-pool").check_config(config, registry=default_registry())
    assert "learngene.stitch_rank = 16 is the full rank of 1 stitch layer(s) (e.g. s0_1_1)" in caplog.text


@pytest.mark.parametrize("key", ["anchors.0.pos_embed", "anchors.1.head.weight", "anchors.2.patch_embed.proj.weight"])
def test_import_refuses_a_flattened_tensor_the_shape_is_read_from(capsys, checkpoint, tmp_path, key):
    """Found by the hostile battery: a 1-D pos_embed gave an IndexError traceback."""
    bad = _edited(checkpoint[0], tmp_path, key, lambda t: t.reshape(-1)[:-1])
    err = fails_cleanly(capsys, "import", "snnet", str(bad), "--anchors", ANCHORS, "-o", str(tmp_path / "o.safetensors"))
    assert f"{key} has shape (" in err and "dimensions a timm ViT's has" in err


def test_a_failed_hf_export_names_the_users_folder_and_leaves_nothing(capsys, pool_file, tmp_path, monkeypatch):
    from stitchkit.apps import hub

    def read_only(pool, key, path, **kw):  # what a read-only target gives inside the temporary folder
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(hub.storage, "export_timm_state_dict", read_only)
    out = tmp_path / "model"
    before = digest(pool_file)
    err = fails_cleanly(capsys, "export", str(pool_file), "0", "--hf", str(out))
    assert err == f"stitchkit: error: {out}: {os.strerror(errno.EROFS)}; the file system is read-only; choose another location\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.safetensors"] and digest(pool_file) == before


def test_an_unreadable_folder_and_a_link_onto_itself_are_one_line(capsys, tmp_path, monkeypatch):
    from stitchkit.engine import imagefolder

    _images(tmp_path / "data")
    os.symlink("self.png", tmp_path / "data" / "a" / "self.png")  # ELOOP: neither a folder nor a readable file
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "data")), "--out", str(tmp_path / "run"))
    assert f"data.root: {tmp_path / 'data' / 'a' / 'self.png'}: cannot read it (Too many levels of symbolic links)" in err
    os.unlink(tmp_path / "data" / "a" / "self.png")
    real = os.scandir

    def scandir(path):  # what a folder without read permission gives (root reads any folder, so it is simulated)
        if str(path).endswith(os.sep + "b"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(imagefolder.os, "scandir", scandir)
    err = fails_cleanly(capsys, "train", str(_train_config(tmp_path, tmp_path / "data")), "--out", str(tmp_path / "run"))
    assert f"data.root: cannot read the folder {tmp_path / 'data' / 'b'} (Permission denied)" in err


def test_snnetv2_stitch_rank_is_checked_on_paper_in_the_pre_flight_check(tmp_path, caplog):
    """No data read, no anchor built with weights: the anchors' widths come from their architectures on the meta device."""
    from stitchkit.core.errors import ConfigError
    from stitchkit.core.registry import default_registry
    from stitchkit.engine.settings import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(SNNETV2)
    method = default_registry().method("snnetv2")
    with pytest.raises(ConfigError, match=r"snnetv2.stitch_rank = 65 is above the rank of stitch layer s0_1_0 \(64 -> 128"):
        method.check_config(load_config(cfg, ["snnetv2.stitch_rank=65"]), registry=default_registry())
    with caplog.at_level("WARNING", logger="stitchkit"):
        method.check_config(load_config(cfg, ["snnetv2.stitch_rank=64"]), registry=default_registry())
    assert "snnetv2.stitch_rank = 64 is the full rank of" in caplog.text
    method.check_config(load_config(cfg, ["snnetv2.stitch_rank=8"]), registry=default_registry())


def test_an_image_that_changes_after_the_check_is_named_when_loaded(tmp_path):
    files = _images(tmp_path / "data")
    d = _folder_data(tmp_path / "data", val_fraction=0.0, test_fraction=0.0)
    for f in files:  # damaged after the check, before the epoch reads them
        f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(StitchkitError, match=r"^data.root: .*\.png is not a readable image any more \(.*\); it changed after"):
        next(iter(d.train_loader(8, epoch=0, seed=0)))



@pytest.mark.parametrize("config, settings, words", [
    (LEARNGENE, ['learngene.initializer="tm-ls"', "learngene.initializer_args.ridge=-0.5"], "tm-ls initializer: ridge must be >= 0, got -0.5"),
    (SNNETV2, ['snnetv2.initializer_args.mode="sideways"'], "ls initializer: mode must be one of"),
    (SNNETV2, ["snnetv2.initializer_args.ridge=-1.0"], "ls initializer: ridge must be >= 0, got -1.0"),
    (SNNETV2, ["snnetv2.sampler_args.gaps=3"], "snnetv2.sampler_args"),
])
def test_initializer_values_fail_in_the_pre_flight_check(capsys, tmp_path, config, settings, words):
    assert words in _build_fails(capsys, tmp_path, config, *settings)


@pytest.mark.parametrize("setting, words", [
    ("snnetv2.sampler_args.gap_fraction=1.5", "the ros sampler needs 0 <= gap_fraction <= 1, got 1.5"),
    ('snnetv2.sampler_args.weighting="cubic"', "the ros sampler's weighting must be 'uniform' or 'linear', got 'cubic'"),
    ("snnetv2.sampler_args.k=0", "the ros sampler needs k > 0, got 0"),
])
def test_snnetv2_sampler_values_fail_before_any_anchor_trains(capsys, tmp_path, setting, words):
    assert words in _build_fails(capsys, tmp_path, SNNETV2, setting)


@pytest.mark.parametrize("settings, words", [
    (['learngene.sampler="ros"', "learngene.sampler_args.gap_fraction=-0.1"], "the ros sampler needs 0 <= gap_fraction <= 1, got -0.1"),
    (['learngene.sampler="flops-grouped"', "learngene.sampler_args.groups=0"], "the flops-grouped sampler needs groups >= 1, got 0"),
])
def test_learngene_sampler_values_fail_before_the_ancestry_trains(capsys, tmp_path, settings, words):
    assert words in _build_fails(capsys, tmp_path, LEARNGENE, *settings)



def test_a_bad_image_in_a_loader_worker_is_still_one_line(tmp_path):
    """With num_workers > 0 torch re-raises the worker's error with its traceback inside the message; the CLI shows the line."""
    from stitchkit.cli.main import error_line

    files = _images(tmp_path / "data")
    d = _folder_data(tmp_path / "data", val_fraction=0.0, test_fraction=0.0, num_workers=1)
    for f in files:
        f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(StitchkitError) as caught:
        next(iter(d.train_loader(8, epoch=0, seed=0)))
    assert "Original Traceback" in str(caught.value)  # what torch gives
    line = error_line(caught.value)
    assert line.startswith("data.root: ") and "is not a readable image any more" in line and "\n" not in line
    assert error_line(StitchkitError("plain: one line")) == "plain: one line"
