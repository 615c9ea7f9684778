"""DC's own augmentation (dd.dcaugment) against its definition: one op per image, each op's geometry by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dd.dcaugment import DCAugment, rotation_grid
from dd.errors import DDError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_cuts_a_window_of_the_mean_padded_image_at_offsets_0_to_2crop_minus_1():
    x = torch.randn(400, 2, 5, 6)
    out = DCAugment("crop", crop=2)(x, gen())
    mean = x.mean(dim=(0, 2, 3)).view(2, 1, 1)
    seen = set()
    for image, got in zip(x, out, strict=True):
        padded = mean.expand(2, 9, 10).clone()
        padded[:, 2:7, 2:8] = image
        offsets = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[:, dy:dy + 5, dx:dx + 6], got)]
        assert offsets, "not a window of the padded image"
        seen.update(offsets)
    assert seen == {(dy, dx) for dy in range(4) for dx in range(4)}  # permutation(2 crop)[0]: never 2 crop


def test_scale_without_range_is_the_identity_and_a_shrunk_image_sits_centred_on_zeros():
    x = torch.randn(8, 1, 10, 10)
    assert torch.equal(DCAugment("scale", scale=0.0)(x, gen()), x)
    ones = torch.ones(300, 1, 10, 10)
    out = DCAugment("scale", scale=0.4)(ones, gen())
    heights = {int((o[0] != 0).any(1).sum()) for o in out}
    assert heights <= set(range(6, 11)) and min(heights) < 10  # int(u * 10), u in [0.6, 1.4), capped by the crop
    for o in out:
        rows = (o[0] != 0).any(1).nonzero().flatten()
        top, bottom = int(rows[0]), 9 - int(rows[-1])
        assert top in (bottom, bottom + 1, bottom - 1)  # centred, the odd pixel on one side
        assert torch.all(o[o != 0] == 1)  # nearest neighbour: no blending


def test_rotation_grid_at_90_degrees_is_rot90_and_at_0_the_identity():
    x = torch.arange(2 * 25, dtype=torch.float32).view(2, 1, 5, 5)
    for size in (4, 5):
        image = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size)
        grid = rotation_grid(math.pi / 2, size, size)[None].float()
        assert torch.allclose(F.grid_sample(image, grid, align_corners=True), image.rot90(1, (2, 3)), atol=1e-4)
    grid = rotation_grid(0.0, 5, 5)[None].float().expand(2, -1, -1, -1)
    assert torch.allclose(F.grid_sample(x, grid, align_corners=True), x, atol=1e-4)


def test_rotation_bounding_box_as_scipy_rounds_it():
    """28x28 at 45 degrees: the rotated corners span 28 (cos + sin) = 39.6, rounded to 40; the 28x28 window starts
    6 in, so the window's centre is the image's (an even margin)."""
    grid = rotation_grid(math.pi / 4, 28, 28)
    centre = grid[13:15, 13:15].mean(dim=(0, 1))
    assert torch.allclose(centre, torch.zeros(2, dtype=torch.float64), atol=1e-9)


def test_rotate_fills_outside_the_image_with_the_mean_of_the_channel_means():
    x = torch.cat([torch.zeros(1, 1, 9, 9), torch.full((1, 1, 9, 9), 2.0)])  # batch mean 1
    corners = []
    for seed in range(40):
        out = DCAugment("rotate")(x, gen(seed))
        assert torch.allclose(out[0, 0, 4, 4], torch.tensor(0.0), atol=1e-6)  # the centre stays
        corners.append(float(out[0, 0, 0, 0]))
    assert all(-1e-6 <= c <= 1 + 1e-6 for c in corners)
    assert max(corners) > 0.99  # a large angle samples the corner outside the image: the fill, 1


def test_noise_adds_gaussian_noise_of_the_given_std():
    x = torch.zeros(200, 1, 16, 16)
    diff = DCAugment("noise")(x, gen()) - x
    assert abs(float(diff.std()) - 0.001) < 5e-5 and abs(float(diff.mean())) < 5e-5


def test_each_image_gets_one_op_drawn_uniformly():
    x = torch.randn(600, 1, 8, 8)
    out = DCAugment("crop_noise")(x, gen())
    noised = (out - x).abs().amax(dim=(1, 2, 3)) < 0.01  # noise of std 0.001; a crop moves pixels by ~1
    assert 240 < int(noised.sum()) < 360  # binomial(600, 1/2): mean 300, std 12
    assert torch.equal(DCAugment("crop_noise")(x, gen()), out)  # the generator decides everything


def test_unknown_ops_are_refused():
    with pytest.raises(DDError, match="unknown DC augmentation op"):
        DCAugment("crop_flip")
