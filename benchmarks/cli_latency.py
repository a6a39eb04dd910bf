"""Command-line start-up: each command's time as a ratio to ``python -c "import torch"``, side by side.

    OMP_NUM_THREADS=1 python benchmarks/cli_latency.py            # 7 rounds
    python benchmarks/cli_latency.py --repeats 15 --out benchmarks/results/cli-latency.json

Every round runs every command once, in turn, each in a fresh interpreter, so
machine load hits all of them alike; the ratio is of medians over rounds.
Wall time and CPU time (user + sys of the child, which load perturbs less) are
both reported. Targets (issue 14): ``--help`` <= 0.15, ``info FILE`` and
``info --json FILE`` <= 0.25 of importing torch; ``plugins`` and ``plan``
about the cost of importing torch and timm plus their own work.

The pool file for ``info`` is the demo's design (rows 6x16:1 and 6x64:4 on
16x16 images, 10 classes), written once to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def make_pool(folder: pathlib.Path) -> pathlib.Path:
    """A demo-shaped pool file with evaluation results (the only part of the benchmark that imports torch)."""
    code = f"""
import torch
from stitchkit.pool.pool import Pool
from stitchkit.core.registry import Registry
from stitchkit.io.storage import save_pool, update_evaluation
from stitchkit.families.vit import TimmViT
torch.manual_seed(0)
rows = [TimmViT.from_arch(dict(img_size=16, patch_size=4, num_classes=10, embed_dim=w, depth=6, num_heads=h))
        for w, h in ((16, 1), (64, 4))]
pool = Pool.from_method(Registry(load_entrypoints=False).method("sequential"), rows)
path = save_pool(pool, {str(folder / "demo-pool.safetensors")!r})
update_evaluation(path, {{i: {{"top1": 50.0 + i}} for i in range(len(pool.paths))}})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return folder / "demo-pool.safetensors"


def stitchkit_command() -> list[str]:
    """The installed console script if there is one next to this interpreter, else ``python -m stitchkit.cli``."""
    script = pathlib.Path(sys.executable).with_name("stitchkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stitchkit.cli"]


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, child user+sys seconds) of one run; output discarded, failure raised."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="rounds (each runs every command once)")
    p.add_argument("--out", default="benchmarks/results/cli-latency.json", help="JSON output")
    p.add_argument("--skip-slow", action="store_true", help="leave out plugins and plan (each imports torch and timm)")
    args = p.parse_args(argv)

    folder = pathlib.Path(tempfile.mkdtemp(prefix="stitchkit-cli-latency-"))
    try:
        pool = make_pool(folder)
        sk = stitchkit_command()
        py = [sys.executable, "-c"]
        commands: dict[str, tuple[list[str], float | None, str]] = {
            # name: (argv, target ratio to 'import torch', what the target is)
            "import torch": ([*py, "import torch"], None, "the reference"),
            "import torch, timm": ([*py, "import torch, timm"], None, "what plugins and plan must import"),
            "stitchkit --help": ([*sk, "--help"], 0.15, "<= 0.15"),
            "stitchkit --version": ([*sk, "--version"], 0.15, "<= 0.15"),
            "stitchkit info FILE": ([*sk, "info", str(pool)], 0.25, "<= 0.25"),
            "stitchkit info --json FILE": ([*sk, "info", "--json", str(pool)], 0.25, "<= 0.25"),
        }
        if not args.skip_slow:
            commands["stitchkit plugins"] = ([*sk, "plugins"], None, "~ import torch, timm")
            commands["stitchkit plan (DeiT-Base pool(12))"] = (
                [*sk, "plan", "--ancestry", "deit_base_patch16_224", "--rows", "6x192:3,6x768:12"],
                None, "~ import torch, timm + planning",
            )
        for argv_ in (c[0] for c in commands.values()):  # warm the page cache (imports, the pool file)
            run_once(argv_)
        walls: dict[str, list[float]] = {n: [] for n in commands}
        cpus: dict[str, list[float]] = {n: [] for n in commands}
        for _ in range(args.repeats):
            for name, (argv_, _, _) in commands.items():
                wall, cpu = run_once(argv_)
                walls[name].append(wall)
                cpus[name].append(cpu)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ref_wall, ref_cpu = statistics.median(walls["import torch"]), statistics.median(cpus["import torch"])
    both_wall = statistics.median(walls["import torch, timm"])
    results = []
    for name, (argv_, target, target_text) in commands.items():
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        row = {"command": name, "wall_s": wall, "cpu_s": cpu, "wall_ratio": wall / ref_wall, "cpu_ratio": cpu / ref_cpu,
               "ratio_to_import_torch_timm": wall / both_wall, "target": target_text,
               "meets_target": None if target is None else wall / ref_wall <= target}
        results.append(row)

    print(f"stitchkit command-line latency: medians of {args.repeats} rounds, ratios to 'python -c \"import torch\"' "
          f"({ref_wall * 1e3:.0f} ms wall, {ref_cpu * 1e3:.0f} ms CPU) in the same rounds; load {os.getloadavg()[0]:.1f}")
    print(f"{'command':<38} {'wall ms':>8} {'CPU ms':>8} {'wall/torch':>10} {'CPU/torch':>9} {'wall/(torch+timm)':>17}  target")
    for r in results:
        mark = "" if r["meets_target"] is None else (" ok" if r["meets_target"] else " MISSED")
        print(f"{r['command']:<38} {r['wall_s'] * 1e3:>8.0f} {r['cpu_s'] * 1e3:>8.0f} {r['wall_ratio']:>10.3f} "
              f"{r['cpu_ratio']:>9.3f} {r['ratio_to_import_torch_timm']:>17.3f}  {r['target']}{mark}")
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats,
           "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"env": env, "results": results}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
