"""A random hostile battery (issue 12): damage pool and descendant files, run every reader, count outcomes.

    python benchmarks/hostile_battery.py --rounds 100 --seed 7

Each round edits a tiny pool file's metadata (``pool`` and ``tensors``) and a
descendant file's ``descendant`` metadata at 1-3 random places (a value
replaced by one of ~30 hostile values: huge or negative integers, strings,
nulls, lists, nested objects; a key deleted; a list item duplicated) and gives
the result a matching ``metadata_sha256`` (a crafted file: the checks behind
the digest), then flips 1-4 random bytes of the header. The **metadata**
family (issue 24) makes one-value edits that change what a descendant computes
or labels (``stitched_final_norm``, a row's ``global_pool``, the class order,
the preprocessing, an evaluation, ``data_sha256``) *without* fixing the
digest, on the pool and on the descendant file: every reader must refuse them. Every reader runs on each damaged file:
``stitchkit info``, ``select``, ``export`` (the CLI), ``load_pool``,
``load_descendant``, ``load_exported``, ``read_descendant_metadata``.

Two more families (issue 24), three cases per round each. **import**: a
miniature official SN-Net checkpoint with one tensor made NaN, Inf, integer,
boolean, truncated, transposed, a list, float64 or float16; a key missing,
extra or renamed; bytes flipped or cut; anchors misnamed; or ``-o`` the
checkpoint, a symlink or a hard link to it, through ``stitchkit import snnet``.
Every refusal must leave the checkpoint byte-identical and no output; an
accepted import (float64, float16, a harmless flipped byte) must load with
``verify=True``. **imagefolder**: a small random folder (flat, or train/ +
val/) with one or two hazards, read by ``build_data``: symlink loops to the
class, split or root, symlinked and hard-linked duplicates, a linked folder
outside, stray files (must give every created image once, in one split);
a file in two classes or two splits, one class, an empty class, truncated
PNG or JPEG, garbage, an empty file, a decompression-bomb header, a FIFO, a
dangling link (must be refused). A refusal of a readable folder, or an
accepted one that miscounts, is **wrong**.

Outcomes: **clean** (exit 2 with one line on stderr, or a StitchkitError),
**accepted** (the reader succeeded: the edit left the described model the
same, e.g. ``class_token: 7`` is truthy like ``true``, or only touched
results or labels), **wrong** (a metadata-family edit the reader accepted),
**traceback** (any other exception) and **hang** (over
30 s, by SIGALRM). A correct stitchkit reports 0 tracebacks and 0 hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import pathlib
import random
import signal
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import torch

from stitchkit.io import storage
from stitchkit.io.header import stamp
from stitchkit.cli.main import main
from stitchkit.core.errors import StitchkitError
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import default_registry
from stitchkit.components.sequential import SequentialMethod
from stitchkit.families.vit import TimmViT

VALUES: list[Any] = [0, -1, 1, 2, 3, 7, 10**6, 10**7, 2**63, -(2**63), 10**30, 0.5, 1e300, -0.0, "", "x", "four", None,
                     True, False, [], {}, [0], [1, 2], [[0, 0, 1]], {"a": 1}, "r0[0:2]", "0", [16, 16], [10**6, 10**6], [0, 0]]


def tiny_pool() -> Pool:
    rows = []
    for width, heads in ((16, 2), (32, 4)):
        torch.manual_seed(width)
        rows.append(TimmViT.from_arch(dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=width, depth=2, num_heads=heads)))
    pool = Pool.from_method(SequentialMethod(), rows)
    pool.info["data"] = {"classes": list("abcde"), "preprocessing": {
        "input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0, "crop_mode": "center"}}
    pool.evaluation = {p.name: {"top1": 0.5} for p in pool.paths}
    return pool.eval()


def read_raw(path: pathlib.Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: pathlib.Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def places(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from places(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from places(v, (*prefix, i))


def mutate(rnd: random.Random, doc: Any) -> None:
    where = rnd.choice(list(places(doc))[1:])
    node = doc
    for k in where[:-1]:
        node = node[k]
    op = rnd.random()
    if op < 0.8:
        node[where[-1]] = copy.deepcopy(rnd.choice(VALUES))
    elif isinstance(node, dict):
        del node[where[-1]]
    else:
        node.append(copy.deepcopy(node[where[-1]]))


#: One-value edits that change a descendant's logits or labels (issue 24), on a pool or descendant description.
EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "stitched_final_norm": lambda d: d.update(stitched_final_norm=False),
    "global_pool": lambda d: d["rows"][-1]["arch"].update(global_pool="avg"),
    "class order": lambda d: d["info"]["data"]["classes"].reverse(),
    "preprocessing": lambda d: d["info"]["data"]["preprocessing"].update(mean=[0.485, 0.456, 0.406]),
    "evaluation": lambda d: d.update(evaluation={}),
    "data_sha256": lambda d: None,  # the entry itself, set in main_battery
}


class Hang(Exception):
    pass


def main_battery(rounds: int, seed: int) -> dict[str, int]:
    rnd = random.Random(seed)
    registry = default_registry()
    counts = {"clean": 0, "accepted": 0, "wrong": 0, "traceback": 0, "hang": 0}

    def on_alarm(*_: Any) -> None:
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)

    def run(what: str, fn: Callable[[], Any], must_refuse: bool = False, check: Callable[[Any], str] | None = None) -> None:
        """``check(result)``: what is wrong with an accepted result ("" if nothing), or with a refusal (result None)."""
        err = io.StringIO()
        signal.alarm(30)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                result = fn()
            signal.alarm(0)
            text = err.getvalue()
            if result == 2 and text.count("\n") == 1 and "Traceback" not in text:
                problem = check(None) if check else ""
                counts["wrong" if problem else "clean"] += 1
                if problem:
                    print("WRONG", what, problem)
            elif isinstance(result, int) and result != 0:
                counts["traceback"] += 1
                print("BAD EXIT", what, text[:300])
            elif must_refuse:
                counts["wrong"] += 1
                print("WRONG (accepted an edited file)", what)
            elif check and (problem := check(result)):
                counts["wrong"] += 1
                print("WRONG", what, problem)
            else:
                counts["accepted"] += 1
        except StitchkitError as exc:
            signal.alarm(0)
            problem = check(None) if check else ""
            counts["wrong" if problem else "clean"] += 1
            if problem:
                print("WRONG", what, problem, "|", str(exc)[:200])
        except Hang:
            counts["hang"] += 1
            print("HANG", what)
        except BaseException as exc:  # noqa: BLE001 - this is what the battery counts
            signal.alarm(0)
            counts["traceback"] += 1
            print("TRACEBACK", what, type(exc).__name__, str(exc)[:300])

    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        pool_file = storage.save_pool(tiny_pool(), d / "pool.safetensors")
        desc_file = storage.export_descendant(pool_file, 1, d / "desc.safetensors", registry=registry)
        out = d / "out.safetensors"
        for i in range(rounds):
            for src, key in ((pool_file, "pool"), (pool_file, "tensors"), (desc_file, "descendant")):
                header, data = read_raw(src)
                doc = json.loads(header["__metadata__"][key])
                for _ in range(rnd.randint(1, 3)):
                    mutate(rnd, doc)
                header["__metadata__"][key] = json.dumps(doc)
                header["__metadata__"] = stamp(header["__metadata__"])
                f = d / f"bad-{key}.safetensors"
                write_raw(f, header, data)
                tag = f"round {i} {key}"
                if src == pool_file:
                    run(f"info {tag}", lambda: main(["info", str(f)]))
                    run(f"select {tag}", lambda: main(["select", str(f), "--max-params", "100000000"]))
                    run(f"export {tag}", lambda: main(["export", str(f), rnd.choice(["0", "1", "x", "#2"]), "-o", str(out)]))
                    run(f"load_pool {tag}", lambda: storage.load_pool(f, registry))
                    run(f"load_descendant {tag}", lambda: storage.load_descendant(f, 1, registry))
                else:
                    run(f"load_exported {tag}", lambda: storage.load_exported(f, registry))
                    run(f"read_descendant_metadata {tag}", lambda: storage.read_descendant_metadata(f))
            for src, key in ((pool_file, "pool"), (desc_file, "descendant")):
                header, data = read_raw(src)
                edit = rnd.choice(sorted(EDITS))
                if edit == "data_sha256":
                    header["__metadata__"]["data_sha256"] = "0" * 64
                else:
                    doc = json.loads(header["__metadata__"][key])
                    EDITS[edit](doc)
                    header["__metadata__"][key] = json.dumps(doc)
                f = d / f"edited-{key}.safetensors"
                write_raw(f, header, data)
                tag = f"round {i} metadata {key} {edit}"
                if src == pool_file:
                    run(f"info --verify {tag}", lambda: main(["info", str(f), "--verify"]), True)
                    run(f"select {tag}", lambda: main(["select", str(f), "--max-params", "100000000"]), True)
                    run(f"export {tag}", lambda: main(["export", str(f), "1", "-o", str(out)]), True)
                    run(f"load_pool {tag}", lambda: storage.load_pool(f, registry), True)
                    run(f"load_descendant {tag}", lambda: storage.load_descendant(f, 1, registry), True)
                else:
                    run(f"load_exported {tag}", lambda: storage.load_exported(f, registry), True)
                    run(f"read_descendant_metadata {tag}", lambda: storage.read_descendant_metadata(f), True)
            raw = bytearray(pool_file.read_bytes())
            (n,) = struct.unpack("<Q", raw[:8])
            for _ in range(rnd.randint(1, 4)):
                raw[rnd.randrange(0, 8 + n)] = rnd.randrange(256)
            f = d / "bad-bytes.safetensors"
            f.write_bytes(bytes(raw))
            run(f"info round {i} bytes", lambda: main(["info", str(f)]))
            run(f"load_pool round {i} bytes", lambda: storage.load_pool(f, registry))
        for name, family in (("import", import_family), ("imagefolder", folder_family)):
            before = dict(counts)
            family(rnd, run, d / name, 3 * rounds)
            print(f"family {name}:", json.dumps({k: counts[k] - before[k] for k in counts}))
    return counts


# --------------------------------------------------------------------------- import family (issue 24)
IMPORT_ANCHORS = "2x16:2,2x32:4,2x64:8"


def official_checkpoint() -> dict[str, torch.Tensor]:
    """A miniature official SN-Net ``stitching_deit`` state dict: three 2-block ViTs, one stitch layer per neighbouring pair."""
    from timm.models.vision_transformer import VisionTransformer

    state: dict[str, torch.Tensor] = {}
    torch.manual_seed(0)
    widths = [(16, 2), (32, 4), (64, 8)]
    for a, (width, heads) in enumerate(widths):
        model = VisionTransformer(img_size=16, patch_size=8, num_classes=7, embed_dim=width, depth=2, num_heads=heads)
        state.update({f"anchors.{a}.{k}": v for k, v in model.state_dict().items()})
    for c in range(2):
        state[f"stitch_layers.{c}.0.transform.weight"] = torch.randn(widths[c + 1][0], widths[c][0]) * 0.3
        state[f"stitch_layers.{c}.0.transform.bias"] = torch.randn(widths[c + 1][0]) * 0.1
    return state


def _set_one(value: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def edit(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[0] = value
        return t
    return edit


#: Edits of one tensor: (edit, must the import refuse it).
TENSOR_EDITS: dict[str, tuple[Callable[[torch.Tensor], Any], bool]] = {
    "nan": (_set_one(float("nan")), True),
    "inf": (_set_one(float("inf")), True),
    "-inf": (_set_one(float("-inf")), True),
    "int32": (lambda t: t.to(torch.int32), True),
    "int64": (lambda t: t.to(torch.int64), True),
    "bool": (lambda t: t.to(torch.bool), True),
    "uint8": (lambda t: t.to(torch.uint8), True),
    "truncated": (lambda t: t.reshape(-1)[:-1], True),
    "transposed": (lambda t: t.t() if t.ndim == 2 and t.shape[0] != t.shape[1] else t.reshape(-1)[:-1], True),
    "a list": (lambda t: t.tolist(), True),
    "float64": (lambda t: t.to(torch.float64), False),  # a float tensor: read as the model's float32
    "float16": (lambda t: t.to(torch.float16), False),
}


def import_family(rnd: random.Random, run: Callable[..., None], d: pathlib.Path, rounds: int) -> None:
    """Each round: one edited official checkpoint, or one bad output path, through ``stitchkit import snnet``.

    Refusals must leave the checkpoint byte-identical and write no output; accepted imports must load.
    """
    import hashlib
    import os

    d.mkdir(parents=True, exist_ok=True)
    state = official_checkpoint()
    keys = sorted(state)

    def digest(p: pathlib.Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for i in range(rounds):
        ck = d / f"ck{i}.pth"
        out = d / f"out{i}.safetensors"
        kind = rnd.choice(["tensor"] * 6 + ["key", "bytes", "output", "anchors"])
        must_refuse, argv_extra = True, []
        anchors = IMPORT_ANCHORS
        if kind == "tensor":
            name, key = rnd.choice(sorted(TENSOR_EDITS)), rnd.choice(keys)
            edit, must_refuse = TENSOR_EDITS[name]
            torch.save({"model": {**state, key: edit(state[key])}}, ck)
            tag = f"{name} at {key}"
        elif kind == "key":
            key = rnd.choice(keys)
            choice = rnd.choice(["missing", "extra", "renamed"])
            edited = dict(state)
            if choice == "missing":
                del edited[key]
            elif choice == "extra":
                edited[key + "_extra"] = state[key]
            else:
                edited[key.replace(".", "_", 1)] = edited.pop(key)
            torch.save({"model": edited}, ck)
            tag = f"{choice} key {key}"
        elif kind == "bytes":
            torch.save({"model": state}, ck)
            raw = bytearray(ck.read_bytes())
            how = rnd.choice(["flip", "truncate", "empty"])
            if how == "flip":
                for _ in range(rnd.randint(1, 8)):
                    raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            ck.write_bytes(bytes(raw) if how == "flip" else bytes(raw[: rnd.randrange(len(raw))]) if how == "truncate" else b"")
            tag = f"bytes {how}"
            must_refuse = how != "flip"  # a flipped byte may land in padding or a weight (then the import is right to accept)
        elif kind == "anchors":
            torch.save({"model": state}, ck)
            anchors = rnd.choice(["2x32:4,2x16:2,2x64:8", "2x16:2,2x32:4", "2x16:2,2x32:4,2x64:8,2x64:8", "3x16:2,3x32:4,3x64:8"])
            tag = f"anchors {anchors}"
        else:
            torch.save({"model": state}, ck)
            how = rnd.choice(["same", "symlink", "hardlink"])
            if how == "same":
                out = ck
            else:
                (os.symlink if how == "symlink" else os.link)(ck, out)
            tag = f"output {how}"
        before = digest(ck)
        existed = out.exists() or out.is_symlink()

        def check(result: Any, ck: pathlib.Path = ck, out: pathlib.Path = out, before: str = before, existed: bool = existed) -> str:
            if digest(ck) != before:
                return f"the checkpoint {ck} changed"
            if result is None:
                return "" if (out.exists() or out.is_symlink()) == existed else f"a refused import left {out}"
            try:
                storage.load_pool(out, default_registry(), verify=True)
            except StitchkitError as exc:
                return f"the imported pool does not load: {exc}"
            return ""

        run(f"import round {i} {tag}", lambda: main(["import", "snnet", str(ck), "--anchors", anchors, "-o", str(out), *argv_extra]),
            must_refuse, check)


# --------------------------------------------------------------------------- image-folder family (issue 24)
def _png(path: pathlib.Path, rnd: random.Random, size: int = 8) -> None:
    from PIL import Image

    Image.frombytes("RGB", (size, size), bytes(rnd.randrange(256) for _ in range(size * size * 3))).save(path)


def _bomb(path: pathlib.Path) -> None:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 200_000, 9)) + chunk(b"IEND", b""))


#: Hazards a folder can hold: name -> must the data source refuse the folder.
HAZARDS = {
    "loop to the class": False, "loop to the split": False, "loop to the root": False, "symlinked duplicate": False,
    "hard-linked duplicate": False, "linked folder outside": False, "text file": False, "folder named x.png": False,
    "file in two classes": True, "file in two splits": True, "one class": True, "empty class": True,
    "truncated png": True, "truncated jpeg": True, "garbage png": True, "empty png": True, "bomb png": True,
    "fifo png": True, "dangling symlink": True,
}


def folder_family(rnd: random.Random, run: Callable[..., None], d: pathlib.Path, rounds: int) -> None:
    """Each round: a small random ImageFolder with one or two hazards, read by ``build_data``.

    A folder with a hazard that must be refused must give a one-line error; any other must give splits that
    hold every image created, each once (by inode), in one split only.
    """
    import os

    from stitchkit.engine.data import DataConfig, build_data

    for i in range(rounds):
        root = d / f"r{i}"
        layout = rnd.choice(["flat", "train-val"])
        splits = ["train", "val"] if layout == "train-val" else [""]
        classes = ["a", "b", "c"]
        images: dict[str, list[pathlib.Path]] = {}
        for split in splits:
            for cls in classes:
                folder = root / split / cls
                folder.mkdir(parents=True)
                images[f"{split}/{cls}"] = []
                for k in range(rnd.randint(6, 8) if split != "val" else 2):
                    _png(folder / f"{k}.png", rnd)
                    images[f"{split}/{cls}"].append(folder / f"{k}.png")
        base = root / splits[0]
        hazards = rnd.sample(sorted(h for h in HAZARDS if h != "file in two splits" or layout == "train-val"), rnd.randint(1, 2))
        hazards.sort(key=lambda h: h == "one class")  # last: the other hazards may use class b
        extra: list[pathlib.Path] = []
        for h in hazards:
            a, b = base / "a", base / "b"
            if h == "loop to the class":
                os.symlink(".", a / f"loop{i}")
            elif h == "loop to the split":
                os.symlink("..", a / f"up{i}")
            elif h == "loop to the root":
                os.symlink(os.path.relpath(root, a), a / f"root{i}")
            elif h == "symlinked duplicate":
                os.symlink(images[f"{splits[0]}/a"][0], a / "dup.png")
            elif h == "hard-linked duplicate":
                os.link(images[f"{splits[0]}/b"][0], b / "hard.png")
            elif h == "linked folder outside":
                outside = d / f"outside{i}"
                outside.mkdir()
                _png(outside / "o.png", rnd)
                extra.append(outside / "o.png")
                os.symlink(outside, a / "more")
            elif h == "text file":
                (a / "notes.txt").write_text("not an image")
            elif h == "folder named x.png":
                (a / "x.png").mkdir(exist_ok=True)
            elif h == "file in two classes":
                os.link(images[f"{splits[0]}/a"][-1], b / "also.png")
            elif h == "file in two splits":
                os.symlink(images["train/a"][0], root / "val" / "a" / "leak.png")
            elif h == "one class":
                for cls in ("b", "c"):
                    for split in splits:
                        for f in (root / split / cls).iterdir():
                            f.unlink()
                        (root / split / cls).rmdir()
            elif h == "empty class":
                (base / "d").mkdir()
            elif h == "truncated png":
                (a / "t.png").write_bytes(images[f"{splits[0]}/a"][0].read_bytes()[:-20])
            elif h == "truncated jpeg":
                from PIL import Image

                Image.frombytes("RGB", (32, 32), bytes(rnd.randrange(256) for _ in range(32 * 32 * 3))).save(a / "t.jpg")
                (a / "t.jpg").write_bytes((a / "t.jpg").read_bytes()[: rnd.randint(200, 600)])
            elif h == "garbage png":
                (a / "g.png").write_bytes(bytes(rnd.randrange(256) for _ in range(300)))
            elif h == "empty png":
                (a / "e.png").write_bytes(b"")
            elif h == "bomb png":
                _bomb(a / "bomb.png")
            elif h == "fifo png":
                os.mkfifo(a / "f.png")
            elif h == "dangling symlink":
                os.symlink(d / "nowhere.png", a / "gone.png")
        refuse = any(HAZARDS[h] for h in hazards)
        expected = {os.stat(p).st_ino for ps in images.values() for p in ps if p.exists()} | {os.stat(p).st_ino for p in extra}

        def check(result: Any, expected: set[int] = expected, refuse: bool = refuse) -> str:
            if result is None:
                return "" if refuse else "refused a folder it can read right"
            from torch.utils.data import Subset

            seen: list[int] = []
            for ds in {id(x): x for x in (result.train, result.val, result.test)}.values():
                ds = getattr(ds, "base", ds)
                samples = [ds.dataset.samples[j] for j in ds.indices] if isinstance(ds, Subset) else ds.samples
                seen += [os.stat(p).st_ino for p, _ in samples]
            if len(result.classes) < 2:
                return f"{len(result.classes)} class(es) accepted"
            if len(seen) != len(set(seen)):  # (val/ serving as the test split too is one dataset, counted once)
                return "an image is counted twice (in one split or in two)"
            if set(seen) != expected:
                return f"{len(set(seen) - expected)} unexpected and {len(expected - set(seen))} missing images"
            return ""

        fractions = {"val_fraction": 0.2, "test_fraction": 0.2} if layout == "flat" else {}
        cfg = DataConfig(source="imagefolder", root=str(root), in_chans=3, img_size=8, split_seed=i, **fractions)
        run(f"imagefolder round {i} {layout} {' + '.join(hazards)}", lambda: build_data(cfg), refuse, check)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    counts = main_battery(args.rounds, args.seed)
    print(json.dumps({**counts, "cases": sum(counts.values())}))
    sys.exit(1 if counts["traceback"] or counts["hang"] else 0)
