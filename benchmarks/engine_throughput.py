"""Training throughput of the engine: a 12-block, width-64 ViT ancestry on digits.

Runs the same training (global batch 64, 16x16 digits, fp32 on CPU) as one
process and under ``torch.distributed.run`` with N processes (DDP, gloo), side
by side, and prints images/s (median over 10-step windows, first window
dropped as warm-up) from each run's metrics.jsonl.

    python benchmarks/engine_throughput.py                 # 1 process vs 2 processes
    python benchmarks/engine_throughput.py --steps 100 --nproc 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = {
    "data": {"source": "digits", "img_size": 16, "in_chans": 1},
    "model": {"depth": 12, "embed_dim": 64, "num_heads": 4, "patch_size": 4},
    "train": {"batch_size": 64, "epochs": 100, "lr": 1e-3, "log_every": 10, "eval_every": 0,
              "checkpoint_every": 0, "progress": False, "device": "cpu"},
}


def worker(out: str, steps: int) -> None:
    import torch

    from stitchkit.engine import train_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    cfg = json.loads(json.dumps(CONFIG))
    cfg["train"]["max_steps"] = steps
    train_model(cfg, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(nproc: int, threads: int, steps: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-{nproc}x{threads}-")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, "--worker", out, "--steps", str(steps)]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in (pathlib.Path(out) / "ancestry" / "metrics.jsonl").read_text().splitlines()]
    ips = [r["images_per_s"] for r in recs if "images_per_s" in r][1:]
    return {"processes": nproc, "threads_per_process": threads, "steps": steps,
            "images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips), "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    print(f"cpu cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    print("| processes | threads/process | images/s (median) | min | max |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.nproc:
        r = measure(n, args.threads, args.steps)
        print(f"| {r['processes']} | {r['threads_per_process']} | {r['images_per_s']:.0f} | {r['min']:.0f} | {r['max']:.0f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
