"""Plain supervised training on in-memory tensors: the loop shared by expert training (dd.buffer),
evaluation (dd.eval) and the evaluations inside a distillation run.

Data stays on the device as tensors; each epoch is a generator-seeded permutation split into
batches, with DSA applied to every training batch. Labels are class ids [N] (cross-entropy) or
soft logits [N, K] (soft cross-entropy against their softmax, as DATM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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


def augmented_batch(
    images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_aug, y, x_clean)`` of the batch at indices ``idx`` (best already on the images' device, see
    ``iterate_batches``); ``x_aug`` is ``x_clean`` without ``augment``."""
    idx = idx.to(images.device)
    x_clean, y = images[idx], labels[idx]
    return (augment(x_clean, generator) if augment is not None else x_clean), y, x_clean


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    generator: torch.Generator,
    step: StepFn | None = None,
) -> None:
    """One pass over (images, labels). ``step(model, x_aug, y, x_clean)`` replaces the default
    forward/backward/step (recipes with several passes per batch or a term on the un-augmented batch);
    ``x_aug`` is the batch augmented by ``augment(x, generator)`` (a ``DSA``, or e.g. ``crop_flip``; ``x_clean``
    itself when ``augment`` is None)."""
    model.train()
    for idx in iterate_batches(images.shape[0], batch_size, generator, images.device):
        x, y, x_clean = augmented_batch(images, labels, idx, augment, generator)
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


def eval_generator(seed: int) -> torch.Generator:
    """The generator of a protocol run with ``seed``: epoch permutations and DSA parameters (the model's
    initialisation draws from ``seed`` itself)."""
    return make_generator(seed + 1_000_003)


def protocol_optimizer(params: Iterable[torch.Tensor], lr: float, protocol: Protocol) -> torch.optim.SGD:
    """The protocol's SGD (momentum, weight decay) over ``params``, at the initial ``lr``."""
    return torch.optim.SGD(params, lr=lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay)


def set_epoch_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int, protocol: Protocol) -> None:
    """The protocol's schedule for 0-based ``epoch``: ``lr`` for the first half, ``lr * 0.1`` after."""
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.1 if epoch >= protocol.epochs // 2 else lr


def protocol_augment(protocol: Protocol) -> DSA | None:
    """The protocol's DSA, or None when it trains without augmentation."""
    return DSA(protocol.dsa_strategy) if protocol.dsa_strategy else None


def train_model(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seed: int,
) -> nn.Module:
    """A fresh ``model_name`` (initialised from ``seed``) trained on ``train`` under ``protocol``, on the
    images' device. All randomness (init, order, DSA) comes from ``seed``."""
    images, labels = train
    model = create_model(model_name, channels, num_classes, im_size, seed=seed).to(images.device)
    generator = eval_generator(seed)
    augment = protocol_augment(protocol)
    optimizer = protocol_optimizer(model.parameters(), lr, protocol)
    for epoch in range(protocol.epochs):
        set_epoch_lr(optimizer, lr, epoch, protocol)
        train_epoch(model, images, labels, optimizer, protocol.batch_size, augment, generator)
    return model


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
    return accuracy(train_model(model_name, channels, num_classes, im_size, train, lr, protocol, seed), *test)
