"""Expert training: a fresh network trained on real data, its flat parameters recorded after every epoch.

The recipe is a plain dataclass so it can be recorded in the store's manifest and hashed into the
store's folder name; expert ``i`` is fully determined by (recipe, base seed, i), which is what makes
a resumed buffer run end with the same experts as an uninterrupted one.

Recipes: MTT (plain SGD, the defaults), GSAM flat experts of FTD/DATM (``optimizer="gsam"``, see
``dd.buffer.gsam``) and AST smooth experts (momentum, lr decay, loss warm-up and gradient penalty, see
``dd.buffer.smooth``). Each is one step function handed to the shared loop (``dd.training.fit``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dd.augment import DSA
from dd.buffer.gsam import gsam_step
from dd.buffer.smooth import smooth_loss, smooth_step, warmup_factor
from dd.device import make_generator
from dd.functional import flatten_params
from dd.models import create_model
from dd.schedule import SGDSchedule
from dd.training import StepFn, accuracy, fit


@dataclass(frozen=True)
class ExpertRecipe:
    """How one expert is trained (MTT defaults: plain SGD, constant lr, DSA on every batch).

    ``optimizer`` "gsam" wraps the SGD in GSAM with ``rho``, ``alpha`` and ``adaptive``. The lr
    (``schedule``) is multiplied by ``lr_decay_factor`` once, after 0-based epoch ``lr_decay_epoch``
    (AST: E//2+1, as the reference's ``if e == E//2+1`` at the end of epoch e); the optimiser is kept, so is
    its momentum (the reference re-creates it and drops the momentum: a deliberate difference).
    ``loss_warmup`` scales the CE by AST's c_e; ``gp_lambda`` > 0 adds AST's gradient penalty.
    ``train_per_class`` N trains on N images of every class of the training split (drawn from
    ``train_subset_seed``, the same for every expert) instead of the whole split.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 50
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    preprocess: str = "standard"
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True
    lr_decay_epoch: int | None = None
    lr_decay_factor: float = 0.6
    loss_warmup: bool = False
    gp_lambda: float = 0.0
    train_per_class: int | None = None
    train_subset_seed: int = 0

    def to_dict(self) -> dict:
        """The recipe as recorded in the manifest and hashed into the store's folder name: the settings
        in effect. GSAM's entries appear for ``gsam`` only, the lr decay when it is on, the warm-up and
        GP when on, the training subset when there is one; so a plain-SGD recipe on the whole split keeps
        the folder it had before these recipes existed."""
        recipe = dataclasses.asdict(self)
        if self.optimizer != "gsam":
            for key in ("rho", "alpha", "adaptive"):
                del recipe[key]
        if self.lr_decay_epoch is None:
            del recipe["lr_decay_epoch"], recipe["lr_decay_factor"]
        if not self.loss_warmup:
            del recipe["loss_warmup"]
        if not self.gp_lambda:
            del recipe["gp_lambda"]
        if self.train_per_class is None:
            del recipe["train_per_class"], recipe["train_subset_seed"]
        return recipe

    def schedule(self) -> SGDSchedule:
        """The expert's SGD epoch by epoch: ``lr``, times ``lr_decay_factor`` after 0-based epoch
        ``lr_decay_epoch``; one optimiser throughout (momentum kept at the decay)."""
        return SGDSchedule(lr=self.lr, epochs=self.epochs, momentum=self.momentum, weight_decay=self.weight_decay,
                           decay_after=self.lr_decay_epoch, decay_factor=self.lr_decay_factor)

    def loss_scale(self, epoch: int) -> float:
        """The factor on the cross-entropy in 0-based ``epoch`` (AST's c_e with ``loss_warmup``, else 1)."""
        return warmup_factor(epoch) if self.loss_warmup else 1.0

    def step(self, optimizer: torch.optim.Optimizer, epoch: int) -> StepFn:
        """The ``train_epoch`` step of 0-based ``epoch`` for ``optimizer`` (the base SGD)."""
        return STEPS[self.optimizer](self, optimizer, self.loss_scale(epoch))


def _sgd(recipe: ExpertRecipe, optimizer: torch.optim.Optimizer, scale: float) -> StepFn:
    return smooth_step(optimizer, scale, recipe.gp_lambda)


def _gsam(recipe: ExpertRecipe, optimizer: torch.optim.Optimizer, scale: float) -> StepFn:
    loss = functools.partial(smooth_loss, scale=scale, gp_lambda=recipe.gp_lambda)
    return gsam_step(optimizer, recipe.rho, recipe.alpha, recipe.adaptive, loss)


# Expert optimisers by name: recipe, base SGD and this epoch's loss scale -> train_epoch step.
STEPS: dict[str, Callable[[ExpertRecipe, torch.optim.Optimizer, float], StepFn]] = {"sgd": _sgd, "gsam": _gsam}


def expert_seed(base_seed: int, index: int) -> int:
    """The seed of expert ``index``: initialisation, batch order and augmentation all derive from it."""
    return base_seed * 1_000_003 + index


def train_expert(
    model_name: str,
    channels: int,
    num_classes: int,
    im_size: tuple[int, int],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    recipe: ExpertRecipe,
    seed: int,
    test_every: int = 0,
    on_epoch: Callable[[int, float | None], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Train one expert and return its trajectory [epochs+1, P] (row 0 = init, on CPU) and a record
    (seed, per-epoch test accuracy or None where not measured, the epochs tested, the lr of each epoch, seconds).
    ``test_every`` = k tests every k epochs; the last epoch is always tested. ``on_epoch(epochs done, test
    accuracy or None)`` follows each epoch (for a progress bar)."""
    model = create_model(model_name, channels, num_classes, im_size, seed=seed).to(train[0].device)
    schedule = recipe.schedule()
    snapshots = [flatten_params(model).cpu()]
    test_acc: list[float | None] = [None] * (recipe.epochs + 1)

    def after_epoch(e: int) -> None:  # 0-based epoch e; snapshot e+1 is taken after it
        snapshots.append(flatten_params(model).cpu())
        if e + 1 == recipe.epochs or (test_every > 0 and (e + 1) % test_every == 0):
            test_acc[e + 1] = accuracy(model, *test)
        if on_epoch is not None:
            on_epoch(e + 1, test_acc[e + 1])

    start = time.perf_counter()
    fit(model, train, schedule, recipe.batch_size, DSA(recipe.dsa_strategy), make_generator(seed), recipe.step,
        after_epoch)
    record = {"seed": seed, "test_acc": test_acc, "final_test_acc": test_acc[-1],
              "tested_epochs": [epoch for epoch, acc in enumerate(test_acc) if acc is not None],
              "lr": [schedule.lr_at(e) for e in range(recipe.epochs)],
              "train_seconds": round(time.perf_counter() - start, 3)}
    return torch.stack(snapshots), record
