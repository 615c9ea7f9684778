"""Plain supervised training on in-memory tensors: the loop shared by expert training (dd.buffer),
evaluation (dd.eval) and the evaluations inside a distillation run, and the protocol runs of evaluation
(``train_model``, ``train_and_score``) under a named ``dd.protocols.Protocol``.

Data stays on the device as tensors; each epoch is a generator-seeded permutation split into
batches, with the protocol's augmentation (DSA, or DC's own) applied to every training batch. Labels are class
ids [N] (cross-entropy) or soft logits [N, K] (soft cross-entropy against their softmax, as DATM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dd import distributed
from dd.device import make_generator
from dd.models import create_model
from dd.protocols import Protocol
from dd.schedule import SGDSchedule, sgd_epochs


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


def mixed_precision(device: torch.device, amp: str) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``amp`` "bf16" (matmuls and convolutions in bf16; the weights, their
    gradients and the optimiser stay fp32, the master copy), a no-op for "none"."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    generator: torch.Generator,
    step: StepFn | None = None,
    amp: str = "none",
) -> None:
    """One pass over (images, labels). ``step(model, x_aug, y, x_clean)`` replaces the default
    forward/backward/step (recipes with several passes per batch or a term on the un-augmented batch);
    ``x_aug`` is the batch augmented by ``augment(x, generator)`` (a ``DSA``, or e.g. ``crop_flip``; ``x_clean``
    itself when ``augment`` is None). ``amp`` "bf16" runs the default step's forward under ``mixed_precision``."""
    model.train()
    for idx in iterate_batches(images.shape[0], batch_size, generator, images.device):
        x, y, x_clean = augmented_batch(images, labels, idx, augment, generator)
        if step is not None:
            step(model, x, y, x_clean)
            continue
        optimizer.zero_grad(set_to_none=True)
        with mixed_precision(images.device, amp):
            loss = classification_loss(model(x), y)
        loss.backward()
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


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    schedule: SGDSchedule,
    batch_size: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    generator: torch.Generator,
    step: Callable[[torch.optim.Optimizer, int], StepFn] | None = None,
    after_epoch: Callable[[int], None] | None = None,
    amp: str = "none",
) -> None:
    """Train ``model`` in place on ``train`` (images, labels): ``schedule.epochs`` calls of ``train_epoch``
    under the schedule's SGD (``dd.schedule.sgd_epochs``). ``step(optimizer, epoch)`` gives the epoch's
    ``train_epoch`` step (default: one classification step, under ``amp``); ``after_epoch(epoch)`` follows each."""
    images, labels = train

    def run_epoch(epoch: int, optimizer: torch.optim.SGD) -> None:
        train_epoch(model, images, labels, optimizer, batch_size, augment, generator,
                    None if step is None else step(optimizer, epoch), amp)

    sgd_epochs(model.parameters(), schedule, run_epoch, after_epoch)


PROGRESS_DELAY_S = 30.0  # a training that ends sooner shows no epoch bar: tests and in-run evaluations stay quiet
PROGRESS_EVERY_S = 1.0  # at most one redraw a second: a log file gets a line per second, not per epoch


@contextmanager
def epoch_progress(epochs: int, desc: str) -> Iterator[Callable[[int], None]]:
    """A bar of the epochs of one training (``desc``: what is trained), nested under the stage's bar; it appears once
    the training has run ``PROGRESS_DELAY_S`` (a full-data network of minutes an epoch otherwise shows nothing for
    hours) and is cleared when it ends. Yields ``after_epoch(epoch)``, which counts one epoch."""
    with tqdm(total=epochs, desc=desc, unit="epoch", leave=False, delay=PROGRESS_DELAY_S,
              mininterval=PROGRESS_EVERY_S, disable=not distributed.is_main()) as bar:
        yield lambda epoch: bar.update(1)


def eval_generator(seed: int) -> torch.Generator:
    """The generator of a protocol run with ``seed``: epoch permutations and DSA parameters (the model's
    initialisation draws from ``seed`` itself)."""
    return make_generator(seed + 1_000_003)


@dataclass(frozen=True)
class Score:
    """Test accuracies in [0, 1] of one protocol run: ``final`` after the last epoch (the headline), and,
    for protocols with ``max_over_test_every`` (AST), ``max_over_epochs``: the maximum over the periodic tests
    and the final one, a model selection on the test split, to be reported only beside ``final``, labelled."""

    final: float
    max_over_epochs: float | None = None


class PeriodicTests:
    """The periodic tests of one protocol run (``max_over_test_every`` = k: after 0-based epochs 0, k, 2k, ...)."""

    def __init__(self, protocol: Protocol, test: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.protocol, self.every, self.test = protocol, protocol.max_over_test_every, test
        self.accuracies: list[float] = []

    def due(self, epoch: int) -> bool:
        """Whether the run is tested after 0-based ``epoch``: 0, k, 2k, ... (``Protocol.tested_after``)."""
        return self.protocol.tested_after(epoch)

    def record(self, model: nn.Module) -> None:
        """Test ``model`` now."""
        self.accuracies.append(accuracy(model, *self.test))

    def score(self, model: nn.Module) -> Score:
        """The run's ``Score`` from the trained ``model``."""
        final = accuracy(model, *self.test)
        return Score(final, max([*self.accuracies, final]) if self.every > 0 else None)


def train_model(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seed: int,
    tests: PeriodicTests | None = None,
) -> nn.Module:
    """A fresh ``model_name`` (initialised from ``seed``) trained on ``train`` under ``protocol`` from the initial
    ``lr``, on the images' device; ``tests`` records its periodic tests. All randomness (init, order, DSA) comes
    from ``seed``."""
    model = create_model(model_name, channels, num_classes, im_size, seed=seed).to(train[0].device)
    schedule = protocol.schedule(lr)
    with epoch_progress(schedule.epochs, f"{model_name} seed {seed}") as count:

        def after_epoch(epoch: int) -> None:
            if tests is not None and tests.due(epoch):
                tests.record(model)
            count(epoch)

        fit(model, train, schedule, protocol.batch_size, protocol.augmentation(), eval_generator(seed),
            after_epoch=after_epoch, amp=protocol.amp)
    return model


def train_and_score(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seed: int,
) -> Score:
    """Train a fresh ``model_name`` (initialised from ``seed``) on ``train`` under ``protocol`` and return its
    ``Score`` on ``test``. All randomness (init, order, DSA) comes from ``seed``."""
    tests = PeriodicTests(protocol, test)
    return tests.score(train_model(model_name, channels, num_classes, im_size, train, lr, protocol, seed, tests))


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
    """The test accuracy after the last epoch: ``train_and_score(...).final`` (same arguments)."""
    return train_and_score(model_name, channels, num_classes, im_size, train, test, lr, protocol, seed).final
