"""What a run reports while it trains: a progress bar, a JSONL metrics file,
and TensorBoard scalars when TensorBoard is installed and asked for; and the
build's history, ``runs.jsonl``, one appended line per phase session and per
build (so a rerun that skips finished phases adds records instead of
replacing the original timings).

Only the main process reports; the others get a silent :class:`RunLog`.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

from ..core.errors import ConfigError
from .config import write_bytes_atomic


class RunLog:
    """Progress and metrics of one phase, written under ``directory`` when ``active``."""

    def __init__(self, directory: pathlib.Path, *, phase: str, total_steps: int, initial_step: int, active: bool, progress: bool = True, tensorboard: bool = False,
                 position: int = 0) -> None:
        self.phase, self.active = phase, active
        self.path = directory / "metrics.jsonl"
        self._bar = None
        self._tb = None
        if not active:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc=phase,
            unit="step",
            dynamic_ncols=True,
            position=position,  # one line per phase trained together
            disable=not (progress and sys.stderr.isatty()),
        )
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "train.tensorboard = true but TensorBoard is not installed; run 'pip install tensorboard' "
                    "or set train.tensorboard = false"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(directory / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written by a run killed after its last checkpoint)."""
        if not self.active or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        write_bytes_atomic(self.path, "".join(f"{line}\n" for line in kept).encode("utf-8"))

    def record(self, metrics: dict[str, Any]) -> None:
        """Append one record (``phase`` and ``step`` are expected keys) to ``metrics.jsonl``."""
        if not self.active:
            return
        rec = {"phase": self.phase, **metrics}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(f"{self.phase}/{key}", value, metrics.get("step", 0))

    def progress(self, steps: int, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


RUNS_FILE = "runs.jsonl"


def append_run_record(out_dir: str | pathlib.Path, record: Mapping[str, Any]) -> None:
    """Append one line to ``out_dir/runs.jsonl`` (the caller is the main process), stamped with UTC time."""
    path = pathlib.Path(out_dir) / RUNS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": stamp, **record}, sort_keys=True) + "\n")


def read_run_records(out_dir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/runs.jsonl``, oldest first (a line cut by a kill is skipped)."""
    path = pathlib.Path(out_dir) / RUNS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def phase_seconds(out_dir: str | pathlib.Path) -> dict[str, float]:
    """Each phase's training time from ``runs.jsonl`` (the latest record; a skipped phase repeats the original).

    What a report's wall-time table should show on a rerun that skipped finished phases.
    """
    return {r["phase"]: float(r["train_s"]) for r in read_run_records(out_dir) if "phase" in r and "train_s" in r}
