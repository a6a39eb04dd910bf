"""Speed benchmark: stitchkit's overheads as ratios measured side by side.

    python benchmarks/speed.py                      # CPU, small shapes, DeiT-Base pool file for (e)
    python benchmarks/speed.py --device cuda --scale full --bf16   # GPU, DeiT-Base pool(12)

(a) a descendant run as a path inside the pool / the same descendant exported standalone   (target <= 1.03)
(b) an exported single-row descendant / timm's own VisionTransformer of the same shape      (target <= 1.03)
(c) one pool fine-tuning step / one training step of the same path as a standalone model    (target <= 1.10)
(d) a distillation step / ancestry forward + auxiliary forward and backward                  (target <= 1.10)
(e) loading the smallest descendant of a DeiT-Base pool(12) file / loading the whole pool   (bytes: within 1.1x
    of the descendant's own size; time, file in the page cache: target <= 0.3), and the same loads with
    ``mmap=True`` (weights left mapped from the file, read on first use: module building only)
(f) switching descendants per request: ``pool.descendant(i)`` after first use, in microseconds (target <= 10 us;
    the official SN-Net switches with ``reset_stitch_id``, an attribute assignment, timed alongside), and
    serving one image per request from a different descendant each time / the same requests on a prebuilt
    list of descendants (target <= 1.03)
--families adds (a) and (b) for a stitched descendant of each hierarchical family (Swin, ResNet,
ConvNeXt; 64x64 images, two rows of four stages): python benchmarks/speed.py --only-families

Each pair is timed alternately (A, B, A, B, ...) and the ratio of medians is
reported, so machine noise hits both sides alike. Results are printed as a
table and written as JSON and CSV next to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stitchkit.io import storage
from stitchkit.engine import Batch, ClassificationTask, DistillationTask, PoolTask
from stitchkit.pool.measure import count_params
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.core.spec import RowShape
from stitchkit.pool.stitched import build_descendant
from stitchkit.families.vit import TimmViT

SCALES = {
    # img, patch, ancestry, rows, batch
    "small": dict(img=32, patch=4, classes=10, ancestry=RowShape(12, 256, 8), rows=[RowShape(6, 64, 2), RowShape(6, 256, 8)], batch=32),
    "full": dict(img=224, patch=16, classes=1000, ancestry=RowShape(12, 768, 12), rows=[RowShape(6, 192, 3), RowShape(6, 768, 12)], batch=64),
}


def arch(shape: RowShape, s: dict) -> dict:
    return dict(img_size=s["img"], patch_size=s["patch"], num_classes=s["classes"], embed_dim=shape.width,
                depth=shape.depth, num_heads=shape.heads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired(a: Callable[[], object], b: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of a() and b(), timed alternately."""
    ta, tb = [], []
    for i in range(warmup + repeats):
        for fn, store in ((a, ta), (b, tb)):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                store.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class FixedPath:
    """A sampler stand-in that always returns one path (the step cost, not the draw, is measured)."""

    def __init__(self, path):
        self.paths, self.macs = [path], None

    def sample(self, generator):
        return self.paths


def train_step(task, model, optimizer, batch, teacher_taps=None, path=None, teacher=None, bf16=False, device=None):
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, bf16):
        taps = None
        if teacher is not None:
            with torch.no_grad():
                taps = teacher.forward_taps(batch.images, teacher_taps)
        out = task.loss(model, batch, taps, path)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    optimizer.step()


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    s = SCALES[args.scale]
    torch.manual_seed(0)
    registry = Registry()
    rows = [TimmViT.from_arch(arch(r, s)) for r in s["rows"]]
    ancestry = TimmViT.from_arch(arch(s["ancestry"], s))
    for a in (*rows, ancestry):
        a.model.to(device)
    pool = Pool.from_method(registry.method("sequential"), rows).to(device)
    x = torch.randn(s["batch"], 3, s["img"], s["img"], device=device)
    y = torch.randint(0, s["classes"], (s["batch"],), device=device)
    batch = Batch(x, y)
    results = []

    def record(name, what, a_time, b_time, target, unit="s"):
        ratio = a_time / b_time
        results.append({"benchmark": name, "what": what, "a": a_time, "b": b_time, "ratio": ratio, "target": target,
                        "meets_target": ratio <= target, "unit": unit})

    mid = pool.path(f"r0[0:3]+s0_1_3+r1[3:{s['rows'][1].depth}]")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="stitchkit-speed-"))

    # (a) in-pool path vs exported standalone
    storage.save_pool(pool, tmp / "pool.safetensors")
    storage.export_descendant(tmp / "pool.safetensors", mid, tmp / "mid.safetensors")
    inpool = pool.descendant(mid).eval()
    exported = storage.load_exported(tmp / "mid.safetensors").to(device).eval()
    with torch.inference_mode(), autocast(device, args.bf16):
        ta, tb = paired(lambda: inpool(x), lambda: exported(x), device, args.repeats)
    record("a", "in-pool path forward / exported descendant forward", ta, tb, 1.03)

    # (b) exported single-row descendant vs timm's VisionTransformer of the same shape
    single = pool.path(f"r1[0:{s['rows'][1].depth}]")
    storage.export_descendant(tmp / "pool.safetensors", single, tmp / "single.safetensors")
    exported1 = storage.load_exported(tmp / "single.safetensors").to(device).eval()
    timm_model = TimmViT.from_arch(arch(s["rows"][1], s)).model.to(device).eval()
    timm_model.load_state_dict(pool.rows[1].state_dict())
    with torch.inference_mode(), autocast(device, args.bf16):
        ta, tb = paired(lambda: exported1(x), lambda: timm_model(x), device, args.repeats)
    record("b", "exported single-row descendant forward / timm VisionTransformer forward", ta, tb, 1.03)

    # (c) pool fine-tuning step vs standalone training step of the same path
    pool.train()
    pool_task = PoolTask(pool, FixedPath(mid))
    pool_opt = torch.optim.AdamW(pool.parameters(), lr=1e-4)
    standalone = pool.descendant(mid, copy=True).train()
    solo_task = ClassificationTask(standalone)
    solo_opt = torch.optim.AdamW(standalone.parameters(), lr=1e-4)
    ta, tb = paired(
        lambda: train_step(pool_task, pool, pool_opt, batch, path=mid, bf16=args.bf16, device=device),
        lambda: train_step(solo_task, standalone, solo_opt, batch, bf16=args.bf16, device=device),
        device, args.repeats,
    )
    record("c", "pool fine-tuning step / standalone training step (same path)", ta, tb, 1.10)
    results[-1]["images_per_s_finetune"] = s["batch"] / ta

    # (d) distillation step vs ancestry forward + auxiliary forward/backward
    narrow = rows[0]
    ancestry.model.eval().requires_grad_(False)
    loss = registry.create("loss", "learngene", ancestry.shape, narrow.shape).to(device)
    distil = DistillationTask(narrow, ancestry, loss, alpha=0.5)
    distil_opt = torch.optim.AdamW(distil.trainable().parameters(), lr=1e-4)
    plain_opt = torch.optim.AdamW(narrow.model.parameters(), lr=1e-4)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        with autocast(device, args.bf16):
            with torch.no_grad():
                ancestry.model(x)
            out = F.cross_entropy(narrow.model(x).float(), y)
        out.backward()
        plain_opt.step()

    narrow.model.train()
    ta, tb = paired(
        lambda: train_step(distil, distil.trainable(), distil_opt, batch, teacher_taps=loss.teacher_taps(),
                           teacher=ancestry, bf16=args.bf16, device=device),
        plain_step, device, args.repeats,
    )
    record("d", "distillation step / (ancestry forward + auxiliary forward and backward)", ta, tb, 1.10)
    results[-1]["images_per_s_distill"] = s["batch"] / ta

    # (e) lazy load of the smallest descendant of a full-scale DeiT-Base pool(12) file
    results.extend(lazy_load(registry, tmp, args.repeats))

    # (f) switching descendants per request
    results.extend(switching(pool.eval(), x[:1], device, args.bf16))
    return results


def switching(pool: Pool, x1: torch.Tensor, device: torch.device, bf16: bool) -> list[dict]:
    """Per-request switching cost, and its share of serving one image per request."""
    n = len(pool.paths)
    order = [i % n for i in range(7 * n)]  # every descendant, several times, in turn
    for i in range(n):
        pool.descendant(i)  # first use builds and caches

    def switch_all() -> None:
        for i in order:
            pool.descendant(i)

    holder = nn.Module()

    def reset_stitch_id_all() -> None:  # the official SN-Net's switch: set an int attribute on the network
        for i in order:
            holder.stitch_config_id = i

    def uncached_all() -> None:
        for i in order[:n]:
            build_descendant(pool.adapters, pool.stitches, pool.paths[i])

    per = []
    for _ in range(21):
        t0 = time.perf_counter()
        switch_all()
        t1 = time.perf_counter()
        reset_stitch_id_all()
        t2 = time.perf_counter()
        uncached_all()
        t3 = time.perf_counter()
        per.append(((t1 - t0) / len(order), (t2 - t1) / len(order), (t3 - t2) / n))
    switch_us, official_us, build_us = (statistics.median(v) * 1e6 for v in zip(*per))
    prebuilt = [pool.descendant(i) for i in range(n)]
    with torch.inference_mode(), autocast(device, bf16):
        ta, tb = paired(lambda: [pool.descendant(i)(x1) for i in order],
                        lambda: [prebuilt[i](x1) for i in order], device, 21)
    return [
        {"benchmark": "f", "what": f"switch per request: pool.descendant(i) after first use, {switch_us:.2f} us "
         f"(official SN-Net reset_stitch_id idea here: {official_us:.2f} us; building a descendant: {build_us:.0f} us)",
         "a": switch_us, "b": 10.0, "ratio": switch_us / 10.0, "target": 1.0, "meets_target": switch_us <= 10.0,
         "unit": "us / 10 us", "switch_us": switch_us, "reset_stitch_id_us": official_us, "uncached_build_us": build_us},
        {"benchmark": "f-serve", "what": f"serve 1 image per request, {len(order)} requests switching among {n} descendants / same on a prebuilt list",
         "a": ta, "b": tb, "ratio": ta / tb, "target": 1.03, "meets_target": ta / tb <= 1.03, "unit": "s"},
    ]


def lazy_load(registry: Registry, tmp: pathlib.Path, repeats: int) -> list[dict]:
    s = SCALES["full"]
    torch.manual_seed(0)
    rows = [TimmViT.from_arch(arch(r, s)) for r in s["rows"]]
    pool = Pool.from_method(registry.method("sequential"), rows)
    file = tmp / "deit-base-pool12.safetensors"
    storage.save_pool(pool, file)
    meta = storage.read_pool_metadata(file)
    sizes = {n: torch.Size(e["shape"]).numel() * 4 for n, e in meta["tensors"].items()}
    costs = pool.costs()
    smallest = min(costs, key=lambda c: c["params"])
    own_bytes = count_params(pool.descendant(smallest["index"])) * 4
    del pool, rows
    names: list[str] = []
    storage.load_descendant(file, smallest["index"], registry, on_read=names.append)
    read_bytes = sum(sizes[n] for n in names)
    ta, tb = paired(lambda: storage.load_descendant(file, smallest["index"], registry),
                    lambda: storage.load_pool(file, registry), torch.device("cpu"), max(3, repeats // 3), warmup=1)
    # mmap=True leaves the weights mapped from the file (pages read on first use): what is left is
    # building the modules and assigning tensors, per-module Python work (an informative line, no target)
    ma, mb = paired(lambda: storage.load_descendant(file, smallest["index"], registry, mmap=True),
                    lambda: storage.load_pool(file, registry, mmap=True), torch.device("cpu"), max(3, repeats // 3), warmup=1)
    file_bytes = file.stat().st_size
    file.unlink()
    return [
        {"benchmark": "e-bytes", "what": f"bytes read for the smallest descendant ({smallest['name']}) / its own size",
         "a": read_bytes, "b": own_bytes, "ratio": read_bytes / own_bytes, "target": 1.1,
         "meets_target": read_bytes / own_bytes <= 1.1, "unit": "bytes", "file_bytes": file_bytes},
        {"benchmark": "e-time", "what": "load smallest descendant / load whole pool (DeiT-Base pool(12) file, "
         "weights read into memory: the default)",
         "a": ta, "b": tb, "ratio": ta / tb, "target": 0.3, "meets_target": ta / tb <= 0.3, "unit": "s"},
        {"benchmark": "e-mmap", "what": "the same with mmap=True (weights left mapped from the file, pages not yet read)",
         "a": ma, "b": mb, "ratio": ma / mb, "target": None, "meets_target": None, "unit": "s"},
    ]


FAMILIES = {
    # adapter module, class, base arch (widths of the narrow row; the wide row doubles every stage), image size
    "swin": ("stitchkit.families.swin", "TimmSwin", dict(img_size=64, patch_size=4, embed_dim=32, depths=[2, 2, 2, 2],
                                               num_heads=[1, 2, 4, 8], window_size=4, drop_path_rate=0.0)),
    "resnet": ("stitchkit.families.resnet", "TimmResNet", dict(block="basic", layers=[2, 2, 2, 2], channels=[16, 32, 64, 128],
                                                     img_size=64)),
    "convnext": ("stitchkit.families.convnext", "TimmConvNeXt", dict(depths=[2, 2, 2, 2], dims=[16, 32, 64, 128], img_size=64)),
}


def family_ratios(args: argparse.Namespace) -> list[dict]:
    """(a) and (b) for one stitched descendant of each hierarchical family (``--families``)."""
    import importlib

    device = torch.device(args.device)
    registry = Registry()
    results = []
    for fam, (module, cls_name, base) in FAMILIES.items():
        cls = getattr(importlib.import_module(module), cls_name)
        torch.manual_seed(0)
        narrow = cls.from_arch({**base, "num_classes": 10})
        wide_shape = RowShape.staged([(d, 2 * w, 2 * h) for d, w, h in narrow.shape.stage_shapes])
        rows = [narrow, cls.from_arch(narrow.resized(wide_shape))]
        pool = Pool.from_method(registry.method("sequential"), rows).to(device).eval()
        size = narrow.input_size
        x = torch.randn(args.family_batch, *size, device=device)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"stitchkit-speed-{fam}-"))
        storage.save_pool(pool, tmp / "pool.safetensors")
        mid = pool.path(f"r0[0:3]+s0_1_3+r1[3:{wide_shape.depth}]")
        storage.export_descendant(tmp / "pool.safetensors", mid, tmp / "mid.safetensors")
        inpool = pool.descendant(mid).eval()
        exported = storage.load_exported(tmp / "mid.safetensors").to(device).eval()
        with torch.inference_mode(), autocast(device, args.bf16):
            ta, tb = paired(lambda: inpool(x), lambda: exported(x), device, args.repeats)
        results.append({"benchmark": f"a-{fam}", "what": f"{fam}: in-pool stitched path / exported descendant (forward)",
                        "a": ta, "b": tb, "ratio": ta / tb, "target": 1.03, "meets_target": ta / tb <= 1.03, "unit": "s"})
        single = pool.path(f"r1[0:{wide_shape.depth}]")
        storage.export_descendant(tmp / "pool.safetensors", single, tmp / "single.safetensors")
        exported1 = storage.load_exported(tmp / "single.safetensors").to(device).eval()
        plain = cls.from_arch(rows[1].arch()).model.to(device).eval()
        plain.load_state_dict(pool.rows[1].state_dict())
        with torch.inference_mode(), autocast(device, args.bf16):
            ta, tb = paired(lambda: exported1(x), lambda: plain(x), device, args.repeats)
        results.append({"benchmark": f"b-{fam}", "what": f"{fam}: exported single-row descendant / timm {type(plain).__name__} (forward)",
                        "a": ta, "b": tb, "ratio": ta / tb, "target": 1.03, "meets_target": ta / tb <= 1.03, "unit": "s"})
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON output (CSV written next to it)")
    p.add_argument("--families", action="store_true", help="also (a) and (b) for Swin, ResNet and ConvNeXt descendants")
    p.add_argument("--only-families", action="store_true", help="only the per-family ratios")
    p.add_argument("--family-batch", type=int, default=16)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [] if args.only_families else run(args)
    if args.families or args.only_families:
        results += family_ratios(args)
    env = {"device": args.device, "scale": args.scale, "bf16": args.bf16, "torch": torch.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "date": time.strftime("%Y-%m-%d"), "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    print(f"stitchkit speed benchmark ({env['device']}, scale {args.scale}{', bf16' if args.bf16 else ''}, torch {env['torch']})")
    print(f"{'':3} {'ratio':>7} {'target':>7}  what")
    for r in results:
        target = f"{r['target']:.2f}" if r["target"] else "-"
        mark = "" if r["meets_target"] is None else ("ok" if r["meets_target"] else "MISSED")
        extra = "".join(f"  [{k} {r[k]:.1f}]" for k in ("images_per_s_finetune", "images_per_s_distill") if k in r)
        print(f"{r['benchmark']:<7} {r['ratio']:>7.3f} {target:>7}  {r['what']} {mark}{extra}")
    out = pathlib.Path(args.out or f"benchmarks/results/speed-{args.device.split(':')[0]}-{args.scale}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"env": env, "results": results}, indent=2))
    os.replace(tmp, out)
    with open(out.with_suffix(".csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["benchmark", "what", "a", "b", "ratio", "target", "meets_target", "unit"], extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    os.replace(out.with_suffix(".csv.tmp"), out.with_suffix(".csv"))
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
