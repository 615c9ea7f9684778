"""Plain supervised training on in-memory tensors: the loop shared by expert training (dd.buffer),
evaluation (dd.eval) and the evaluations inside a distillation run.

Data stays on the device as tensors; each epoch is a generator-seeded permutation split into
batches, with DSA applied to every training batch. Labels are class ids [N] (cross-entropy) or
soft logits [N, K] (soft cross-entropy against their softmax, as DATM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dd.augment import DSA
from dd.device import make_generator
from dd.models import create_model


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k softmax(target)_k * log_softmax(logits)_k (DATM's SoftCE, T=1)."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for class ids [B], soft cross-entropy for logit targets [B, K]."""
    return soft_cross_entropy(logits, labels) if labels.dim() == 2 else F.cross_entropy(logits, labels)


StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``step(model, x_aug, y, x_clean)``: one optimisation step on a batch (see ``train_epoch``)."""


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode passes inside leave BatchNorm running statistics and counters as they were: the norm
    layers run with momentum 0 (running <- 1 * running + 0 * batch) and their counters are restored.
    Batch statistics still normalise; autograd graphs built inside stay valid after exit."""
    norms = [m for m in model.modules() if getattr(m, "running_mean", None) is not None and hasattr(m, "momentum")]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One epoch of shuffled index batches drawn from the CPU ``generator``; the permutation moves to
    ``device`` in one copy per epoch, not one per batch."""
    return list(torch.randperm(n, generator=generator).to(device, non_blocking=True).split(batch_size))


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    augment: DSA | None,
    generator: torch.Generator,
    step: StepFn | None = None,
) -> None:
    """One pass over (images, labels). ``step(model, x_aug, y, x_clean)`` replaces the default
    forward/backward/step (recipes with several passes per batch or a term on the un-augmented batch);
    ``x_aug`` is the DSA-augmented batch (``x_clean`` itself when ``augment`` is None)."""
    model.train()
    for idx in iterate_batches(images.shape[0], batch_size, generator, images.device):
        x_clean, y = images[idx], labels[idx]
        x = augment(x_clean, generator) if augment is not None else x_clean
        if step is not None:
            step(model, x, y, x_clean)
            continue
        optimizer.zero_grad(set_to_none=True)
        classification_loss(model(x), y).backward()
        optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (in eval mode) on class ids ``labels``."""
    model.eval()
    correct = torch.zeros((), device=images.device)
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size]).sum()
    return correct.item() / max(1, images.shape[0])


@dataclass(frozen=True)
class Protocol:
    """The MTT evaluation protocol: SGD(momentum 0.9, wd 5e-4), lr x0.1 at half, DSA on training batches,
    test accuracy after the last epoch."""

    epochs: int = 1000
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"

    def describe(self, lr: float) -> dict:
        """JSON-able description recorded with every result."""
        return {"epochs": self.epochs, "lr": lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "augment": self.dsa_strategy or "none", "lr_decay": "x0.1 at epochs/2",
                "optimizer": "sgd"}


def train_and_test(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seed: int,
) -> float:
    """Train a fresh ``model_name`` (initialised from ``seed``) on ``train`` under ``protocol`` and return
    its test accuracy after the last epoch. All randomness (init, order, DSA) comes from ``seed``."""
    images, labels = train
    device = images.device
    model = create_model(model_name, channels, num_classes, im_size, seed=seed).to(device)
    generator = make_generator(seed + 1_000_003)
    augment = DSA(protocol.dsa_strategy) if protocol.dsa_strategy else None
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    for epoch in range(protocol.epochs):
        if epoch == protocol.epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        train_epoch(model, images, labels, optimizer, protocol.batch_size, augment, generator)
    return accuracy(model, *test)
