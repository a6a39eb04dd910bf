"""One process or many: the same code runs alone or under ``torchrun``.

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`dist_context`
then joins the process group (gloo on CPU, nccl on GPU) once, and every
helper here degrades to a no-op for a single process.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"train.device must be 'auto', 'cpu' or 'cuda', got {device!r}")


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def dist_context(device: str = "auto") -> DistContext:
    """Join the process group if launched by torchrun (idempotent) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # Tear the group down before the interpreter does: a gloo group left to process exit can abort a
        # rank ("terminate called without an active exception") while its threads are still running.
        atexit.register(_destroy_group)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world, local_rank, dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max of ``t`` over ranks in place (no-op alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_bytes(payload: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's equal-length uint8 tensor (e.g. an RNG state), without pickling."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [payload]
    x = payload.to(device=device, dtype=torch.int32)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return [o.to("cpu", torch.uint8) for o in out]


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's boolean, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([1 if value else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
