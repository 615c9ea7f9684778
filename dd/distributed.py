"""Scale-out under torchrun: independent jobs (experts, evaluation runs) shared among ranks, and one job's
minibatch split across ranks (``share``) with its sums taken over them (``sum_over_ranks``).

``torchrun --nproc-per-node K -m dd.buffer ...`` starts K processes with WORLD_SIZE, RANK and
LOCAL_RANK set; ``setup`` then joins them in one process group (gloo on CPU, NCCL on CUDA, each rank
on GPU LOCAL_RANK). A plain ``python -m`` run is one process and never touches torch.distributed:
every helper here is then the single-process identity (rank 0 of 1, barrier a no-op).

Ranks wait for each other at the end of ``dd.buffer`` (barrier) and in ``dd.eval``'s results gather, possibly for
as long as the longest job of another rank (uneven experts, a full-data baseline): the process group's timeout,
after which NCCL's watchdog (or gloo) kills a waiting rank, is ``DD_DIST_TIMEOUT_MINUTES`` (default
``DEFAULT_TIMEOUT_MINUTES``), not torch's 10 (NCCL) or 30 (gloo) minutes.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dd.device import setup_device
from dd.errors import DDError

T = TypeVar("T")

DEFAULT_TIMEOUT_MINUTES = 12 * 60  # the longest single job we run (a full-data 300-epoch baseline) fits with room
TIMEOUT_ENV = "DD_DIST_TIMEOUT_MINUTES"


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def timeout() -> datetime.timedelta:
    """How long a rank waits for the others in a collective: ``DD_DIST_TIMEOUT_MINUTES`` (a positive number) or
    ``DEFAULT_TIMEOUT_MINUTES``."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return datetime.timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise DDError(f"{TIMEOUT_ENV}={text!r} is not a positive number of minutes; unset it for the default "
                      f"{DEFAULT_TIMEOUT_MINUTES}")
    return datetime.timedelta(minutes=minutes)


def setup(device: str = "auto", tf32: bool = False, deterministic: bool = False) -> torch.device:
    """The device of this process (``dd.device.setup_device``: backends set, device printed once), after joining
    the process group, with ``timeout()``, when launched by torchrun.

    Under torchrun ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` when CUDA is available; only rank 0 prints."""
    if not launched():
        return setup_device(device, tf32, deterministic)
    wait = timeout()
    if device in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    resolved = setup_device(device, tf32, deterministic, quiet=os.environ.get("RANK") != "0")
    if not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=wait)
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


def share(size: int) -> slice:
    """This rank's contiguous part of ``range(size)``: the parts of all ranks tile it, in rank order, and
    differ in length by one at most (the whole range when single-process)."""
    k, r = world_size(), rank()
    return slice(size * r // k, size * (r + 1) // k)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the same all-reduce of the incoming gradient: every rank consumes the
    sum, so the adjoint of each rank's input is the sum of the ranks' adjoints of the output. Its backward is
    itself differentiable (double backward through an inner gradient works)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, on every rank, bitwise the same there; differentiable (see
    ``_SumOverRanks``). Single-process it is ``tensor`` itself."""
    return _SumOverRanks.apply(tensor) if dist.is_initialized() else tensor


def average_gradients(tensors: Iterable[torch.Tensor]) -> None:
    """Replace the ``.grad`` of each tensor (those that have one) by its mean over the ranks, in place; a no-op
    single-process. When every rank computes the same loss L from the same replicated state and partial sums
    joined by ``sum_over_ranks``, the ranks' backward passes together compute the gradient of K copies of L (each
    sum's backward adds the K ranks' adjoints), so the ranks' gradients sum to K dL/dx and their mean is dL/dx."""
    k = world_size()
    if k == 1:
        return
    for t in tensors:
        if t.grad is not None:
            dist.all_reduce(t.grad)
            t.grad.div_(k)


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from position ``rank``."""
    return list(items[rank()::world_size()])


def gather_shards(mine: Sequence[T]) -> list[T]:
    """Inverse of ``shard``: every rank's (done part of its) share, back in the original order."""
    shares = all_gather_object(list(mine))
    longest = max(len(s) for s in shares)
    return [s[i] for i in range(longest) for s in shares if i < len(s)]
