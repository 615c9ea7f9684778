"""Initialisations of the synthetic images, by name (``--pix-init``).

Each takes the method's context and a generator and returns [K*ipc, C, H, W] images in model space,
``ipc`` consecutive images per class. Methods register the ones that need experts (DATM's
"correct", AST's "kmeans") in their own modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dd.data import class_indices
from dd.distill.context import Context
from dd.errors import DDError

Init = Callable[[Context, torch.Generator], torch.Tensor]
INITS: dict[str, Init] = {}


def register_init(name: str) -> Callable[[Init], Init]:
    """Decorator adding an initialisation under ``name``."""

    def wrap(fn: Init) -> Init:
        INITS[name] = fn
        return fn

    return wrap


def init_images(name: str, ctx: Context, generator: torch.Generator) -> torch.Tensor:
    """Run the initialisation ``name``."""
    if name not in INITS:
        raise DDError(f"unknown --pix-init '{name}'; choose from {', '.join(sorted(INITS))}")
    return INITS[name](ctx, generator)


def class_pools(ctx: Context) -> list[torch.Tensor]:
    """Per class, the indices of its training images (CPU); an IPC larger than a class is an error."""
    cfg, data = ctx.config, ctx.data
    pools = class_indices(data.train_labels.cpu(), data.spec.num_classes)
    for c, idx in enumerate(pools):
        if len(idx) < cfg.ipc:
            raise DDError(f"--ipc {cfg.ipc} is larger than class {c} of {data.spec.name}, which has {len(idx)} "
                          f"training images; lower --ipc")
    return pools


@register_init("real")
def real_init(ctx: Context, generator: torch.Generator) -> torch.Tensor:
    """``ipc`` random real training images of each class (MTT)."""
    images = ctx.data.train_images
    picks = [idx[torch.randperm(len(idx), generator=generator)[: ctx.config.ipc]] for idx in class_pools(ctx)]
    return images[torch.cat(picks).to(images.device)].clone()


@register_init("noise")
def noise_init(ctx: Context, generator: torch.Generator) -> torch.Tensor:
    """Standard Gaussian noise."""
    spec, cfg = ctx.data.spec, ctx.config
    class_pools(ctx)
    shape = (spec.num_classes * cfg.ipc, spec.channels, *spec.size)
    return torch.randn(shape, generator=generator).to(ctx.data.train_images.device)
