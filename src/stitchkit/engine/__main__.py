"""``python -m stitchkit.engine train CONFIG [--set k=v] [--out DIR]``.

Trains the plain ViT of the config's ``[model]`` section (an ancestry or an
anchor) with :func:`~stitchkit.engine.model.train_model`. The same command
runs alone or under ``torchrun --nproc_per_node N -m stitchkit.engine train ...``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..core.errors import StitchkitError


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stitchkit.engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pt = sub.add_parser("train", help="train the [model] ViT on the [data] (resumable)")
    pt.add_argument("config", help="TOML config file (or a resolved.json)")
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (TOML value)")
    pt.add_argument("--out", default=None, help="output folder (default: the config's out_dir, else runs/<config name>)")
    pt.add_argument("--name", default="ancestry", help="phase and file name (default: ancestry)")
    args = p.parse_args(argv)
    from ..cli.console import error, setup

    setup()
    try:
        from ..cli.build import resolve_out_dir
        from .config import load_config
        from .model import train_model

        config = load_config(args.config, args.set)
        path = train_model(config, resolve_out_dir(config, args.config, args.out), name=args.name)
    except StitchkitError as exc:
        error(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    print(f"model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
