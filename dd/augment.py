"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021) with MTT's ops and parameters.

``DSA(strategy)(x, generator)`` augments a batch [N, C, H, W] in the way of MTT's ``DiffAugment`` in mode
'S': each call draws ONE op group uniformly from the strategy's '_'-separated groups ('color' is
brightness, saturation and contrast in sequence) and applies it with per-sample parameters. All
randomness comes from the CPU ``generator``: the small parameter tensors are drawn on the CPU and moved to
``x``'s device, so the same generator state gives the same augmentation on any device ("siamese"), and
the global RNG is never touched. Every op is differentiable with respect to ``x``.

The op functions below take explicit per-sample parameters and can be used on their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dd.errors import DDError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """MTT's ``ParamDiffAug`` (``ratio_noise`` is unused there and omitted here), and how scale and rotate
    resample: ``align_corners`` of ``affine_grid``/``grid_sample``, True in MTT and its forks (FTD, DATM, AST),
    False (PyTorch's default, not passed) in the DC/DSA/DM code. On square images the two give the same
    sampling points (to rounding); on non-square ones rotations differ."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True


# ---- ops with explicit parameters (per-sample tensors of shape [N] on x's device) ----

def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def brightness(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x + shift`` per sample."""
    return x + _per_sample(shift)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-pixel mean over channels."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * _per_sample(factor) + m


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-sample mean over all channels and pixels."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _per_sample(factor) + m


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image's content by integer (dy, dx) pixels (down, right), zero-filling what enters:
    ``out[n, :, i, j] = x[n, :, i - dy, j - dx]``."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # index 0 and h + 1 (w + 1) read zeros
    rows = (torch.arange(h, device=x.device) - dy.view(-1, 1)).clamp(-1, h) + 1  # [N, H]
    cols = (torch.arange(w, device=x.device) - dx.view(-1, 1)).clamp(-1, w) + 1  # [N, W]
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size`` (rows, cols) rectangle centred at (cy, cx) per sample (rows ``cy - size//2`` onwards),
    clipped to the image."""
    _, _, h, w = x.shape
    top = (cy - size[0] // 2).view(-1, 1)
    left = (cx - size[1] // 2).view(-1, 1)
    r = torch.arange(h, device=x.device)
    c = torch.arange(w, device=x.device)
    in_rows = (r >= top) & (r < top + size[0])  # [N, H]
    in_cols = (c >= left) & (c < left + size[1])  # [N, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep.unsqueeze(1).to(x.dtype)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror horizontally the samples where the bool ``mask`` is set."""
    return torch.where(_per_sample(mask), x.flip(3), x)


def affine(x: torch.Tensor, theta: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinear resampling of ``x`` with ``affine_grid(theta [N, 2, 3])``, zero padding; ``align_corners`` for
    both calls (True: MTT's scale and rotate; False: the DC/DSA/DM code's)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def scale_theta(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] affine matrices ``[[sx, 0, 0], [0, sy, 0]]``."""
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)


def rotate_theta(angle: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] rotation matrices for ``angle`` in radians."""
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


# ---- random ops: draw parameters on the CPU from the generator, apply on x's device ----

Op = Callable[[torch.Tensor, DSAParams, torch.Generator], torch.Tensor]


def _uniform(n: int, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    """U[0, 1) of shape [n], drawn on the CPU, as x's dtype on x's device."""
    return torch.rand(n, generator=g).to(x.device, x.dtype, non_blocking=True)


def _randint(low: int, high: int, n: int, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=g).to(x.device, non_blocking=True)


def rand_brightness(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    return brightness(x, (_uniform(x.shape[0], g, x) - 0.5) * p.brightness)


def rand_saturation(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    return saturation(x, _uniform(x.shape[0], g, x) * p.saturation)


def rand_contrast(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    return contrast(x, _uniform(x.shape[0], g, x) + p.contrast)


def rand_crop(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    """Random integer translation in [-int(H*r + 0.5), +int(H*r + 0.5)] (and likewise W), zero fill."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
    return translate(x, _randint(-sh, sh + 1, n, g, x), _randint(-sw, sw + 1, n, g, x))


def rand_cutout(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    """Zero an int(H*r + 0.5) x int(W*r + 0.5) square at a random centre."""
    n, _, h, w = x.shape
    size = (int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5))
    cy = _randint(0, h + (1 - size[0] % 2), n, g, x)
    cx = _randint(0, w + (1 - size[1] % 2), n, g, x)
    return cutout(x, cy, cx, size)


def rand_flip(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=g) < p.prob_flip
    return flip(x, mask.to(x.device, non_blocking=True))


def rand_scale(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    """Independent sx, sy ~ U[1/r, r]."""
    n, r = x.shape[0], p.ratio_scale
    sx = torch.rand(n, generator=g) * (r - 1.0 / r) + 1.0 / r
    sy = torch.rand(n, generator=g) * (r - 1.0 / r) + 1.0 / r
    return affine(x, scale_theta(sx, sy).to(x.device, x.dtype, non_blocking=True), p.align_corners)


def rand_rotate(x: torch.Tensor, p: DSAParams, g: torch.Generator) -> torch.Tensor:
    """Angle ~ U[-r, r] degrees."""
    angle = (torch.rand(x.shape[0], generator=g) - 0.5) * 2.0 * math.radians(p.ratio_rotate)
    return affine(x, rotate_theta(angle).to(x.device, x.dtype, non_blocking=True), p.align_corners)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the side (pad-4 crop at 32 px) then a horizontal flip with p 0.5,
    both per sample: the standard crop + flip augmentation (KRR-ST's real batches and fine-tuning)."""
    return rand_flip(rand_crop(x, DSAParams(), generator), DSAParams(), generator)


GROUPS: dict[str, tuple[Op, ...]] = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "brightness": (rand_brightness,),
    "saturation": (rand_saturation,),
    "contrast": (rand_contrast,),
    "crop": (rand_crop,),
    "cutout": (rand_cutout,),
    "flip": (rand_flip,),
    "scale": (rand_scale,),
    "rotate": (rand_rotate,),
}


class DSA:
    """A DSA strategy: ``'_'``-separated op groups (``'none'`` or ``''`` for the identity)."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, params: DSAParams = DSAParams()) -> None:
        self.strategy = strategy
        self.params = params
        self.groups: list[str] = [] if strategy in ("", "none") else strategy.split("_")
        for name in self.groups:
            if name not in GROUPS:
                raise DDError(f"unknown DSA op '{name}' in strategy '{strategy}'; use '_'-separated ops from "
                              f"{', '.join(GROUPS)} (or 'none')")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``x`` [N, C, H, W] with one op group drawn from ``generator`` (a CPU generator)."""
        if not self.groups:
            return x
        group = self.groups[int(torch.randint(len(self.groups), (1,), generator=generator))]
        for op in GROUPS[group]:
            x = op(x, self.params, generator)
        return x

    def __repr__(self) -> str:
        return f"DSA({self.strategy!r})"
