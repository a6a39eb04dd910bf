"""cProfile of the demo on a shortened budget, in one process: where the time goes.

    OMP_NUM_THREADS=1 python benchmarks/profile_demo.py OUT_DIR [--top 40]

Writes OUT_DIR.prof and prints the top items by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

from stitchkit.apps.demo import run_demo

SHORT = ["demo.workers=1", "demo.ancestry_epochs=5", "demo.auxiliary_epochs=3", "demo.finetune_epochs=2", "train.progress=false"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args(argv)
    profiler = cProfile.Profile()
    profiler.runcall(run_demo, args.out, SHORT)
    profiler.dump_stats(args.out + ".prof")
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
