"""SGD epoch by epoch under a one-step schedule: the optimiser loop of every supervised training in dd.

Expert training (``dd.buffer.experts``), evaluation under a protocol (``dd.training.train_model``) and
several seeds trained together (``dd.multiseed``) differ only in what one epoch does; the optimiser,
its lr and momentum per epoch, and when it is re-created come from one ``SGDSchedule`` run here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from dd.device import retain_freed_memory

EpochFn = Callable[[int, torch.optim.SGD], None]
"""``run_epoch(epoch, optimizer)``: one epoch of training (0-based ``epoch``) with this epoch's optimiser."""


@dataclass(frozen=True)
class SGDSchedule:
    """SGD for ``epochs`` epochs with at most one change: ``lr`` and ``momentum`` up to and including 0-based
    epoch ``decay_after``, then ``lr * decay_factor`` and ``momentum_after`` (None: ``momentum``).

    ``reset_at_decay`` builds a fresh optimiser for the first decayed epoch, so its momentum buffer starts
    from zero, as the references' ``optimizer = SGD(...)`` at the end of epoch ``decay_after``; otherwise the
    same optimiser continues with the new values. No decay when ``decay_after`` is None."""

    lr: float
    epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay_after: int | None = None
    decay_factor: float = 1.0
    momentum_after: float | None = None
    reset_at_decay: bool = False

    def decayed(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` runs after the decay."""
        return self.decay_after is not None and epoch > self.decay_after

    def lr_at(self, epoch: int) -> float:
        """The lr of 0-based ``epoch``."""
        return self.lr * self.decay_factor if self.decayed(epoch) else self.lr

    def momentum_at(self, epoch: int) -> float:
        """The momentum of 0-based ``epoch``."""
        after = self.momentum if self.momentum_after is None else self.momentum_after
        return after if self.decayed(epoch) else self.momentum

    def fresh_optimizer_at(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` starts with a new optimiser: the first epoch, and the first decayed one
        when ``reset_at_decay``."""
        return epoch == 0 or (self.reset_at_decay and self.decay_after is not None and epoch == self.decay_after + 1)


def sgd_epochs(params: Iterable[torch.Tensor], schedule: SGDSchedule, run_epoch: EpochFn,
               after_epoch: Callable[[int], None] | None = None) -> None:
    """Run ``schedule.epochs`` epochs of ``run_epoch(epoch, optimizer)`` over ``params``, with the SGD
    (lr, momentum, weight decay) of each epoch; ``after_epoch(epoch)`` follows each (snapshots, tests)."""
    retain_freed_memory()  # the same large blocks every batch: reuse them, do not page-fault them in again
    params = list(params)
    optimizer: torch.optim.SGD | None = None
    for epoch in range(schedule.epochs):
        if optimizer is None or schedule.fresh_optimizer_at(epoch):
            optimizer = torch.optim.SGD(params, lr=schedule.lr_at(epoch), momentum=schedule.momentum_at(epoch),
                                        weight_decay=schedule.weight_decay)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(epoch)
            group["momentum"] = schedule.momentum_at(epoch)
        run_epoch(epoch, optimizer)
        if after_epoch is not None:
            after_epoch(epoch)
