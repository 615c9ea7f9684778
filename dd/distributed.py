"""Scale-out under torchrun: independent jobs (experts, evaluation runs) shared among ranks.

``torchrun --nproc-per-node K -m dd.buffer ...`` starts K processes with WORLD_SIZE, RANK and
LOCAL_RANK set; ``setup`` then joins them in one process group (gloo on CPU, NCCL on CUDA, each rank
on GPU LOCAL_RANK). A plain ``python -m`` run is one process and never touches torch.distributed:
every helper here is then the single-process identity (rank 0 of 1, barrier a no-op).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dd.device import resolve_device

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: str = "auto") -> torch.device:
    """The device of this process, after joining the process group when launched by torchrun.

    Under torchrun ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` when CUDA is available."""
    if not launched():
        return resolve_device(device)
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        atexit.register(_teardown)
    return resolved


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 when single-process)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes sharing the work (1 when single-process)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that prints summaries and writes merged outputs."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op when single-process)."""
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """``obj`` of every rank, by rank (``[obj]`` when single-process)."""
    if not dist.is_initialized():
        return [obj]
    found: list[Any] = [None] * world_size()
    dist.all_gather_object(found, obj)
    return found


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from position ``rank``."""
    return list(items[rank()::world_size()])


def gather_shards(mine: Sequence[T]) -> list[T]:
    """Inverse of ``shard``: every rank's (done part of its) share, back in the original order."""
    shares = all_gather_object(list(mine))
    longest = max(len(s) for s in shares)
    return [s[i] for i in range(longest) for s in shares if i < len(s)]
