"""DC's own augmentation of training batches (the DC code's ``augment`` with ``get_daparam``'s parameters).

The DC code evaluates a DC set without DSA; ``get_daparam`` gives MNIST the strategy ``crop_scale_rotate`` and
the model ConvNetBN ``crop_noise`` (else none), and those train 1000 epochs instead of 300. Each image of a batch
gets ONE op, drawn uniformly from the strategy's '_'-separated ops, with the channel means of the batch (taken
before any op) as the fill:

- crop: pad ``crop`` pixels a side with the channel mean, cut an HxW window at offsets drawn from
  0 .. 2 crop - 1 (the reference's ``np.random.permutation(2 * crop)[0]``: a shift of ``crop`` down or right
  never occurs);
- scale: nearest-neighbour resize to ``int(u * H)`` x ``int(v * W)`` (u, v uniform in 1 ± scale), centred on a
  zero canvas of side max(h, w, H, W), the centre HxW cut out (the reference sizes the width from H too: the same
  on square images);
- rotate: an integer angle in [-rotate, rotate) degrees about the centre, sampled where scipy's
  ``ndimage.rotate(reshape=True)`` samples (the bounding box of the rotated image, its centre HxW cut out, so an
  odd margin shifts the window half a pixel, as the reference's integer crop does), outside the image the mean
  of the channel means; bilinear where the reference interpolates with a cubic spline;
- noise: ``x + noise * N(0, 1)`` per pixel.

All randomness comes from the CPU ``generator``, as DSA's (``dd.augment``). Not differentiable: it augments
training batches of fixed images, as in the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dd.errors import DDError

OPS = ("crop", "scale", "rotate", "noise")


@dataclass(frozen=True)
class DCAugment:
    """One DC augmentation strategy (``'_'``-separated ops from ``OPS``) with ``get_daparam``'s parameters."""

    strategy: str
    crop: int = 4
    scale: float = 0.2
    rotate: int = 45  # degrees
    noise: float = 0.001

    def __post_init__(self) -> None:
        unknown = [op for op in self.strategy.split("_") if op not in OPS]
        if not self.strategy or unknown:
            raise DDError(f"unknown DC augmentation op(s) {', '.join(unknown) or '(none)'} in '{self.strategy}'; "
                          f"use '_'-separated ops from {', '.join(OPS)}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` [N, C, H, W] with one op per image drawn from ``generator`` (a CPU generator)."""
        ops = self.strategy.split("_")
        choice = torch.randint(len(ops), (x.shape[0],), generator=generator)
        mean = x.mean(dim=(0, 2, 3))
        out = x.clone()
        for k, op in enumerate(ops):
            idx = (choice == k).nonzero().flatten()
            if len(idx):
                out[idx.to(x.device)] = getattr(self, f"_{op}")(x[idx.to(x.device)], mean, generator)
        return out

    def _crop(self, x: torch.Tensor, mean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.crop
        padded = mean.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = (torch.randint(2 * p, (n,), generator=g).to(x.device) for _ in range(2))
        rows = dy[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
        cols = dx[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
        return padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)

    def _scale(self, x: torch.Tensor, mean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        factors = 1 - self.scale + 2 * self.scale * torch.rand(n, 2, generator=g, dtype=torch.float64)
        out = torch.empty_like(x)
        for i in range(n):
            sh, sw = int(factors[i, 0] * h), int(factors[i, 1] * w)
            side = max(sh, sw, h, w)
            canvas = x.new_zeros(c, side, side)
            r, q = (side - sh) // 2, (side - sw) // 2
            canvas[:, r:r + sh, q:q + sw] = F.interpolate(x[i:i + 1], size=[sh, sw], mode="nearest")[0]
            r, q = (side - h) // 2, (side - w) // 2
            out[i] = canvas[:, r:r + h, q:q + w]
        return out

    def _rotate(self, x: torch.Tensor, mean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        angles = torch.randint(-self.rotate, self.rotate, (n,), generator=g).double() * math.pi / 180
        fill = mean.mean()
        grids = torch.stack([rotation_grid(float(a), h, w) for a in angles]).to(x.device, x.dtype)
        return F.grid_sample(x - fill, grids, mode="bilinear", padding_mode="zeros", align_corners=True) + fill

    def _noise(self, x: torch.Tensor, mean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x + self.noise * torch.randn(x.shape, generator=g).to(x.device, x.dtype)


def rotation_grid(angle: float, h: int, w: int) -> torch.Tensor:
    """The [H, W, 2] ``grid_sample`` grid (x, y in [-1, 1], ``align_corners=True``) of the input points that
    scipy's ``ndimage.rotate(angle, reshape=True)`` followed by the reference's centre crop samples: input =
    R (output - centre of the rotated bounding box) + centre of the input, with R = [[cos, sin], [-sin, cos]] on
    (row, column)."""
    cos, sin = math.cos(angle), math.sin(angle)
    out_h = int(abs(cos) * h + abs(sin) * w + 0.5)  # the bounding box of the rotated corners, as scipy rounds it
    out_w = int(abs(sin) * h + abs(cos) * w + 0.5)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    rows = torch.arange(h, dtype=torch.float64)[:, None] + top - (out_h - 1) / 2
    cols = torch.arange(w, dtype=torch.float64)[None, :] + left - (out_w - 1) / 2
    in_rows = cos * rows + sin * cols + (h - 1) / 2
    in_cols = -sin * rows + cos * cols + (w - 1) / 2
    return torch.stack([2 * in_cols / max(w - 1, 1) - 1, 2 * in_rows / max(h - 1, 1) - 1], dim=-1)
