"""The model registry: a model is a name plus keyword settings of one constructor (timm style)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dd.errors import DDError

ModelFn = Callable[..., nn.Module]
_MODELS: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: register ``fn(channels, num_classes, im_size, **kw) -> nn.Module`` under ``name``."""

    def decorate(fn: ModelFn) -> ModelFn:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return decorate


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_MODELS)


def create_model(name: str, channels: int, num_classes: int, im_size: tuple[int, int], seed: int | None = None,
                 **overrides) -> nn.Module:
    """Build model ``name`` for inputs [B, channels, H, W] with ``im_size = (H, W)``; returns logits [B, classes].

    ``overrides`` replace the variant's keyword settings (e.g. ``width=16``). With ``seed`` the weights are
    drawn from a forked CPU RNG seeded with it, so the same seed gives the same weights and the global RNG
    state is left untouched; without it the weights come from the global RNG as usual.
    """
    if name not in _MODELS:
        raise DDError(f"unknown model '{name}'; choose from {', '.join(_MODELS)}")
    height, width = (int(s) for s in im_size)
    if height < 1 or width < 1:
        raise DDError(f"image size must be positive, got {tuple(im_size)}")
    build = _MODELS[name]
    if seed is None:
        return build(channels, num_classes, (height, width), **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(channels, num_classes, (height, width), **overrides)
