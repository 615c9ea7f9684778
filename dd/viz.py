"""Saving image grids for a person to look at: the grid of a set (with its class names and iteration), the
history of grids over a run and its animation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from dd.data.folder import folder_class_names
from dd.io import atomic_write

PADDING = 2
GRID_PATTERN = re.compile(r"grid_(\d+)\.png")


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(draw, text: str, font, width: int) -> str:
    """``text``, cut and ended with an ellipsis, so that it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def grid_image(images: torch.Tensor, nrow: int, min_side: int = 32, labels: Sequence[str] | None = None,
               title: str | None = None):
    """A PIL image of ``images`` [N, C, H, W] in [0, 1] (clamped), ``nrow`` tiles a row, nearest-upsampled so
    each tile is at least ``min_side`` pixels. ``labels`` (one per image) are written under each row: once
    for a run of tiles with the same label, so a row of one class is named once; ``title`` above the grid."""
    from PIL import Image, ImageDraw

    images = images.detach().float().cpu().clamp(0, 1)
    scale = max(1, -(-min_side // images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=PADDING, pad_value=1.0)
    pixels = Image.fromarray(grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    if labels is None and title is None:
        return pixels
    tile_h, tile_w = images.shape[-2] + PADDING, images.shape[-1] + PADDING
    font_size = 12
    strip = font_size + 4 if labels is not None else 0
    top = font_size + 8 if title is not None else 0
    rows = -(-images.shape[0] // nrow)
    out = Image.new("RGB", (pixels.width, top + rows * (tile_h + strip) + PADDING), "white")
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    if title is not None:
        draw.text((PADDING, 3), _fit(draw, title, font, out.width - 2 * PADDING), fill="black", font=font)
    for row in range(rows):
        y = top + row * (tile_h + strip)
        out.paste(pixels.crop((0, row * tile_h, pixels.width, row * tile_h + tile_h + PADDING)), (0, y))
        if labels is None:
            continue
        row_labels = list(labels[row * nrow:(row + 1) * nrow])
        start = 0
        while start < len(row_labels):  # one label under each run of equal labels
            end = start
            while end + 1 < len(row_labels) and row_labels[end + 1] == row_labels[start]:
                end += 1
            width = (end - start + 1) * tile_w - PADDING
            text = _fit(draw, str(row_labels[start]), font, width)
            x = PADDING + start * tile_w + (width - draw.textlength(text, font=font)) / 2
            draw.text((x, y + tile_h + 1), text, fill="black", font=font)
            start = end + 1
    return out


def save_grid(path: str | Path, images: torch.Tensor, nrow: int, min_side: int = 32,
              labels: Sequence[str] | None = None, title: str | None = None) -> None:
    """Write ``grid_image(images, nrow, min_side, labels, title)`` as a PNG (atomically)."""
    image = grid_image(images, nrow, min_side, labels, title)
    atomic_write(path, lambda p: image.save(str(p), format="png"))


def class_names(dataset: str, data_path: str | None, num_classes: int) -> list[str]:
    """The names of the classes of ``dataset`` by class id: the class folders of a folder dataset, else the
    class ids as text."""
    names = folder_class_names(dataset, data_path)
    return names if names is not None and len(names) == num_classes else [str(c) for c in range(num_classes)]


def grid_history(folder: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every ``grid_<iteration>.png`` in ``folder``, by iteration."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("grid_*.png") if (m := GRID_PATTERN.fullmatch(p.name))]
    return sorted(found)


def save_history_gif(path: str | Path, frames: Sequence[Path], seconds_per_frame: float = 0.5,
                     max_side: int = 1024) -> None:
    """Write the PNGs ``frames`` (same size, in order) as a looping GIF, each shrunk to at most ``max_side``
    pixels a side; the last frame is held three times as long."""
    from PIL import Image

    images = []
    for frame in frames:
        with Image.open(frame) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            images.append(im.copy())
    if not images:
        return
    durations = [int(1000 * seconds_per_frame)] * len(images)
    durations[-1] *= 3
    atomic_write(path, lambda p: images[0].save(str(p), format="gif", save_all=True, append_images=images[1:],
                                                duration=durations, loop=0))
