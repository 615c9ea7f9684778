"""Several seeds of one architecture trained at once under the evaluation protocol.

The S models' parameters are stacked into tensors [S, ...] and one ``torch.func.vmap`` of
``functional_call`` runs the forward and backward of all seeds together; SGD with momentum and weight
decay is elementwise, so one optimizer over the stacked tensors is S independent optimizers. Each seed
keeps everything its sequential run (``dd.training.train_model``) has: the initial weights from
``create_model(..., seed=s)``, its own generator for the epoch permutations and the DSA parameters, and
the protocol's schedule through the same ``dd.schedule.sgd_epochs`` (lr decay, optimiser reset, momentum
change), so a batched seed follows the sequential run up to floating-point reassociation in the batched kernels
(weights within 1e-7 after 30 epochs; over hundreds of epochs the rounding grows and an accuracy can move
by a few test images, as between two machines). Architectures that ``can_batch`` rejects are trained one
seed after another.

Batching saves kernel launches and Python overhead, which dominate small models on a GPU; on a CPU the
step is compute-bound and vmap's layout copies make it no faster (slower at 100 images per batch), so
CPU callers may prefer ``batched=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from dd.errors import DDError
from dd.models import create_model
from dd.protocols import Protocol
from dd.schedule import sgd_epochs
from dd.training import (
    PeriodicTests,
    Score,
    accuracy,
    augmented_batch,
    classification_loss,
    epoch_progress,
    eval_generator,
    iterate_batches,
    mixed_precision,
    train_model,
)


def can_batch(model: nn.Module) -> bool:
    """Whether seeds of ``model`` can train under one vmap: the model has no buffers (state outside the
    parameters that training mutates and the seeds would share, e.g. BatchNorm running statistics) and no
    dropout (its masks come from the global RNG and could not follow each seed's sequential run)."""
    return not any(True for _ in model.buffers()) and not any(
        isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


def _copy_back(per_model: list[dict[str, torch.Tensor]], stacked: dict[str, torch.Tensor]) -> None:
    """Write seed i's slice of the stacked parameters into model i."""
    with torch.no_grad():
        for i, params in enumerate(per_model):
            for name, value in stacked.items():
                params[name].copy_(value[i])


def _train_stacked(models: list[nn.Module], train: tuple[torch.Tensor, torch.Tensor], lr: float,
                   protocol: Protocol, seeds: Sequence[int], name: str,
                   tests: Sequence[PeriodicTests] | None = None) -> None:
    """Train ``models`` (one per seed, same architecture) in place, all seeds in each vmapped step, under the
    protocol's schedule (``dd.schedule.sgd_epochs``, as the sequential run); ``tests[i]`` records seed i's
    periodic tests; ``name`` labels the epoch bar."""
    images, labels = train
    per_model = [dict(m.named_parameters()) for m in models]
    stacked = {name: torch.stack([p[name].detach() for p in per_model]).requires_grad_() for name in per_model[0]}
    generators = [eval_generator(seed) for seed in seeds]
    augment = protocol.augmentation()
    template = models[0]
    losses = vmap(lambda params, x, y: classification_loss(functional_call(template, params, (x,)), y))

    def run_epoch(epoch: int, optimizer: torch.optim.SGD) -> None:
        template.train()
        orders = [iterate_batches(images.shape[0], protocol.batch_size, g, images.device) for g in generators]
        for step in zip(*orders, strict=True):
            xs, ys = [], []
            for idx, g in zip(step, generators, strict=True):  # each seed's batch and DSA draw, as alone
                x, y, _ = augmented_batch(images, labels, idx, augment, g)
                xs.append(x)
                ys.append(y)
            optimizer.zero_grad(set_to_none=True)
            with mixed_precision(images.device, protocol.amp):
                loss = losses(stacked, torch.stack(xs), torch.stack(ys)).sum()
            loss.backward()  # seed s's loss: its slice only
            optimizer.step()

    schedule = protocol.schedule(lr)
    with epoch_progress(schedule.epochs, f"{name} seeds {', '.join(map(str, seeds))}") as count:

        def after_epoch(epoch: int) -> None:
            if tests and tests[0].due(epoch):
                _copy_back(per_model, stacked)
                for seed_tests, model in zip(tests, models, strict=True):
                    seed_tests.record(model)
            count(epoch)

        sgd_epochs(stacked.values(), schedule, run_epoch, after_epoch)
    _copy_back(per_model, stacked)


def train_seeds(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seeds: Sequence[int],
    batched: bool = True,
    tests: Sequence[PeriodicTests] | None = None,
) -> list[nn.Module]:
    """``[train_model(..., seed, tests[i]) for i, seed in enumerate(seeds)]``, trained together when ``batched``
    and ``can_batch``."""
    if len(seeds) == 0:
        raise DDError("no seeds to train; pass at least one seed (e.g. seeds=[0])")
    models = [create_model(model_name, channels, num_classes, im_size, seed=seed).to(train[0].device)
              for seed in seeds]
    if not (batched and can_batch(models[0])):
        return [train_model(model_name, channels, num_classes, im_size, train, lr, protocol, seed,
                            None if tests is None else tests[i]) for i, seed in enumerate(seeds)]
    _train_stacked(models, train, lr, protocol, seeds, model_name, tests)
    return models


def train_and_score_seeds(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seeds: Sequence[int],
    batched: bool = True,
    periodic: bool = True,
) -> list[Score]:
    """The ``Score`` of each seed, as ``[train_and_score(..., seed) for seed in seeds]`` (same arguments). Without
    ``periodic`` the protocol's periodic tests (AST's every 20 epochs, for a maximum reported beside the final
    accuracy) are skipped and each score holds the final accuracy only: those tests can cost more than training."""
    tests = [PeriodicTests(protocol, test) for _ in seeds] if periodic else None
    models = train_seeds(model_name, channels, num_classes, im_size, train, lr, protocol, seeds, batched, tests)
    if tests is None:
        return [Score(accuracy(model, *test)) for model in models]
    return [seed_tests.score(model) for seed_tests, model in zip(tests, models, strict=True)]


def train_and_test_seeds(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    protocol: Protocol,
    seeds: Sequence[int],
    batched: bool = True,
) -> list[float]:
    """Test accuracy of each seed after the last epoch, as ``[train_and_test(..., seed) for seed in seeds]``, without
    the protocol's periodic tests (in-run evaluation wants the final accuracy only)."""
    scores = train_and_score_seeds(model_name, channels, num_classes, im_size, train, test, lr, protocol, seeds,
                                   batched, periodic=False)
    return [score.final for score in scores]
