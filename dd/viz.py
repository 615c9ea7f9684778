"""Saving image grids for a person to look at."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from dd.io import atomic_write


def save_grid(path: str | Path, images: torch.Tensor, nrow: int, min_side: int = 32) -> None:
    """Write ``images`` [N, C, H, W] in [0, 1] (clamped) as a PNG grid, nearest-upsampled so each
    tile is at least ``min_side`` pixels (8x8 digits become readable)."""
    images = images.detach().float().cpu().clamp(0, 1)
    scale = max(1, -(-min_side // images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    atomic_write(path, lambda p: save_image(images, str(p), nrow=nrow, padding=2, format="png"))
