"""Expert training: a fresh network trained on real data, its flat parameters recorded after every epoch.

The recipe is a plain dataclass so it can be recorded in the store's manifest and hashed into the
store's folder name; expert ``i`` is fully determined by (recipe, base seed, i), which is what makes
a resumed buffer run end with the same experts as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from dd.augment import DSA
from dd.device import make_generator
from dd.functional import flatten_params
from dd.models import create_model
from dd.training import accuracy, train_epoch


@dataclass(frozen=True)
class ExpertRecipe:
    """How one expert is trained (MTT defaults: plain SGD, constant lr, DSA on every batch)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 50
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    preprocess: str = "standard"

    def to_dict(self) -> dict:
        """The recipe as recorded in the manifest."""
        return dataclasses.asdict(self)


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
) -> tuple[torch.Tensor, dict]:
    """Train one expert and return its trajectory [epochs+1, P] (row 0 = init, on CPU) and a record
    (seed, per-epoch test accuracy or None where not measured, seconds). ``test_every`` = k tests
    every k epochs; the last epoch is always tested."""
    images, labels = train
    model = create_model(model_name, channels, num_classes, im_size, seed=seed).to(images.device)
    generator = make_generator(seed)
    augment = DSA(recipe.dsa_strategy)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    snapshots = [flatten_params(model).cpu()]
    test_acc: list[float | None] = [None] * (recipe.epochs + 1)
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        train_epoch(model, images, labels, optimizer, recipe.batch_size, augment, generator)
        snapshots.append(flatten_params(model).cpu())
        if epoch == recipe.epochs or (test_every > 0 and epoch % test_every == 0):
            test_acc[epoch] = accuracy(model, *test)
    record = {"seed": seed, "test_acc": test_acc, "final_test_acc": test_acc[-1],
              "train_seconds": round(time.perf_counter() - start, 3)}
    return torch.stack(snapshots), record
