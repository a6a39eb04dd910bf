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

    def run(what: str, fn: Callable[[], Any], must_refuse: bool = False) -> None:
        err = io.StringIO()
        signal.alarm(30)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                result = fn()
            signal.alarm(0)
            text = err.getvalue()
            if result == 2 and text.count("\n") == 1 and "Traceback" not in text:
                counts["clean"] += 1
            elif isinstance(result, int) and result != 0:
                counts["traceback"] += 1
                print("BAD EXIT", what, text[:300])
            elif must_refuse:
                counts["wrong"] += 1
                print("WRONG (accepted an edited file)", what)
            else:
                counts["accepted"] += 1
        except StitchkitError:
            signal.alarm(0)
            counts["clean"] += 1
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
    return counts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    counts = main_battery(args.rounds, args.seed)
    print(json.dumps({**counts, "cases": sum(counts.values())}))
    sys.exit(1 if counts["traceback"] or counts["hang"] else 0)
