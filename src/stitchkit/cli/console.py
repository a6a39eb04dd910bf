"""What a command prints, once per run: rank 0 talks, other torchrun ranks stay quiet.

Under ``torchrun`` every process runs the same command; without this each
would print the same "pool written" line, the same warnings and, on Ctrl-C,
its own traceback. Only the environment is read here (no torch import), so
the CLI stays fast.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from types import FrameType


def rank() -> int:
    """This process's rank under torchrun (0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def setup() -> int:
    """Route stitchkit's log to stderr on rank 0; silence stdout, warnings and logs on the others.

    Under torchrun, SIGTERM (what torchrun sends its workers when one fails or
    it is interrupted) ends a worker like Ctrl-C: with the CLI's one line, on rank 0 only.
    Returns the rank.
    """
    r = rank()
    log = logging.getLogger("stitchkit")
    if not any(getattr(h, "_stitchkit_console", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._stitchkit_console = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if r == 0 else logging.CRITICAL + 1)
    if r != 0:
        if "torch" not in sys.modules:  # C++ warnings (e.g. the DDP reducer's): read by torch at import
            os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        warnings.simplefilter("ignore")
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    if under_torchrun():
        signal.signal(signal.SIGTERM, _interrupt)
    return r


def error(message: str) -> None:
    """The CLI's one error line, printed by rank 0 only (every rank meets the same error)."""
    if rank() == 0:
        print(f"stitchkit: {message}", file=sys.stderr)
