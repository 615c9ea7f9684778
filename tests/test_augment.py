"""dd.augment: DSA ops on hand cases, determinism from the generator, differentiability, strategy parsing."""

from __future__ import annotations

import math

import pytest
import torch

from dd.augment import (
    DSA,
    DSAParams,
    affine,
    brightness,
    contrast,
    cutout,
    flip,
    rotate_theta,
    saturation,
    scale_theta,
    translate,
)
from dd.errors import DDError

OPS = ["color", "brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale", "rotate"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 6, c: int = 3, h: int = 8, w: int = 8, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(123), dtype=dtype)


# ---- strategy and randomness ----

def test_same_seed_same_output_different_seed_different_output():
    x = batch()
    dsa = DSA()
    for seed in range(5):
        assert torch.equal(dsa(x, gen(seed)), dsa(x, gen(seed)))
    outputs = [dsa(x, gen(seed)) for seed in range(5)]
    assert all(not torch.equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:])


@pytest.mark.parametrize("op", OPS)
def test_each_op_is_seeded_and_leaves_the_global_rng_alone(op):
    x = batch()
    state = torch.get_rng_state()
    a, b = DSA(op)(x, gen(1)), DSA(op)(x, gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, DSA(op)(x, gen(2))) or op == "flip"  # flip masks may coincide by chance


def test_identity_strategy():
    x = batch()
    g = gen(0)
    for strategy in ("none", ""):
        assert DSA(strategy)(x, g) is x
    assert torch.equal(g.get_state(), gen(0).get_state())  # consumes no randomness


@pytest.mark.parametrize("strategy", ["color_blur", "color__crop", "Flip", "_"])
def test_unknown_op_is_a_one_line_error(strategy):
    with pytest.raises(DDError, match=f"unknown DSA op '.*' in strategy '{strategy}'; use '_'-separated ops"):
        DSA(strategy)


def test_mode_s_applies_one_group_to_the_whole_batch():
    x = batch()
    chosen = []
    for seed in range(60):
        y = DSA("brightness_flip")(x, gen(seed))
        diff = y - x
        if torch.allclose(diff, diff.mean(dim=(1, 2, 3), keepdim=True).expand_as(diff), atol=1e-6):
            chosen.append("brightness")
        else:
            assert all(torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(2)) for i in range(len(x)))
            chosen.append("flip")
    assert 15 < chosen.count("flip") < 45  # the group is drawn uniformly


def test_runs_on_8x8_single_channel_and_float64():
    x1 = batch(c=1)
    x64 = batch(dtype=torch.float64)
    for seed in range(12):
        assert DSA()(x1, gen(seed)).shape == (6, 1, 8, 8)
        assert DSA()(x64, gen(seed)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", OPS)
def test_cuda_matches_cpu_under_the_same_seed(op):
    x = batch(h=32, w=32)
    y = DSA(op)(x.cuda(), gen(7))
    assert y.device.type == "cuda" and torch.allclose(y.cpu(), DSA(op)(x, gen(7)), atol=1e-5)


# ---- differentiability ----

@pytest.mark.parametrize("op", OPS)
def test_gradient_matches_finite_differences(op):
    x = torch.rand(2, 3, 5, 5, generator=gen(0), dtype=torch.float64, requires_grad=True)
    dsa = DSA(op)
    assert torch.autograd.gradcheck(lambda t: dsa(t, gen(3)), (x,), eps=1e-6, atol=1e-5)
    (grad,) = torch.autograd.grad((dsa(x, gen(3)) * torch.arange(75.0, dtype=x.dtype).view(1, 3, 5, 5)).sum(), x)
    assert grad.abs().sum() > 0


# ---- ops on hand cases ----

def asymmetric() -> torch.Tensor:
    return torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)


def test_flip_mirrors_only_masked_samples():
    x = asymmetric()
    y = flip(x, torch.tensor([True, False]))
    assert torch.equal(y[0, :, :, 0], x[0, :, :, -1]) and torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    flipped = [torch.equal(DSA("flip")(x, gen(s))[0], x[0].flip(-1)) for s in range(40)]
    assert 8 < sum(flipped) < 32  # p = 0.5 per sample


def test_translate_shifts_pixels_and_zero_fills():
    x = torch.zeros(2, 1, 6, 6)
    x[:, 0, 2, 3] = 1.0
    y = translate(x, torch.tensor([1, -2]), torch.tensor([-2, 0]))
    assert y[0, 0, 3, 1] == 1.0 and y[1, 0, 0, 3] == 1.0 and y.sum() == 2.0
    ones = translate(torch.ones(1, 2, 4, 4), torch.tensor([1]), torch.tensor([-1]))
    assert ones[0, :, 0].abs().sum() == 0 and ones[0, :, :, 3].abs().sum() == 0 and ones.sum() == 2 * 9


@pytest.mark.parametrize(("size", "max_shift"), [(8, 1), (32, 4), (64, 8)])
def test_crop_is_a_translation_within_the_pad_ratio(size, max_shift):
    x = torch.rand(4, 1, size, size, generator=gen(0)) + 0.1
    seen = set()
    for seed in range(25):
        y = DSA("crop")(x, gen(seed))
        for i in range(len(x)):
            matches = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
                       if torch.equal(y[i:i + 1], translate(x[i:i + 1], torch.tensor([dy]), torch.tensor([dx])))]
            assert len(matches) == 1
            seen.add(matches[0])
    assert max(max(abs(dy), abs(dx)) for dy, dx in seen) == max_shift


def test_cutout_zeros_a_square_of_the_expected_size():
    y = cutout(torch.ones(1, 2, 8, 8), torch.tensor([4]), torch.tensor([4]), (4, 4))
    assert torch.equal(y[0, 0] == 0, y[0, 1] == 0) and (y[0, 0] == 0).sum() == 16
    assert (y[0, 0, 2:6, 2:6] == 0).all()
    corner = cutout(torch.ones(1, 1, 8, 8), torch.tensor([0]), torch.tensor([8]), (4, 4))
    assert (corner[0, 0, :2, 6:] == 0).all() and (corner == 0).sum() == 4  # clipped at the border
    counts = []
    for seed in range(30):
        zeros = DSA("cutout")(torch.ones(3, 1, 32, 32), gen(seed))[:, 0] == 0
        for z in zeros:
            rows, cols = z.any(1).sum().item(), z.any(0).sum().item()
            assert z.sum() == rows * cols and rows <= 16 and cols <= 16  # a (clipped) rectangle
            counts.append(z.sum().item())
    assert max(counts) == 16 * 16  # int(32 * 0.5 + 0.5)
    odd = (DSA("cutout")(torch.ones(64, 1, 9, 9), gen(0)) == 0).sum(dim=(1, 2, 3))
    assert odd.max() == 25  # int(9 * 0.5 + 0.5) = 5
    assert (DSA("cutout")(torch.ones(8, 1, 8, 8), gen(0)) == 0).sum(dim=(1, 2, 3)).max() <= 16  # 4x4 at 8 px


def test_brightness_adds_the_drawn_amount():
    x = batch()
    y = DSA("brightness")(x, gen(5))
    g = gen(5)
    torch.randint(1, (1,), generator=g)  # the group draw
    amount = torch.rand(len(x), generator=g) - 0.5  # brightness 1.0
    assert torch.allclose(y, x + amount.view(-1, 1, 1, 1))
    assert torch.equal(brightness(x, torch.full((6,), 0.25)), x + 0.25)


def test_saturation_and_contrast_formulas():
    x = batch()
    grey = saturation(x, torch.zeros(6))
    assert torch.allclose(grey, x.mean(dim=1, keepdim=True).expand_as(x))
    assert torch.allclose(saturation(x, torch.ones(6)), x)
    f = torch.linspace(0.5, 1.5, 6)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(contrast(x, f), (x - m) * f.view(-1, 1, 1, 1) + m)
    assert torch.allclose(contrast(x, f).mean(dim=(1, 2, 3)), m.flatten(), atol=1e-6)
    # the drawn contrast factors lie in [0.5, 1.5)
    for seed in range(10):
        y = DSA("contrast")(x, gen(seed))
        ratio = ((y - m) / (x - m)).flatten(1)
        assert ((ratio >= 0.5 - 1e-4) & (ratio < 1.5 + 1e-4)).all()
    # custom parameters are honoured
    wide = DSA("brightness", DSAParams(brightness=4.0))(x, gen(5))
    assert torch.allclose(wide - x, 4.0 * (DSA("brightness")(x, gen(5)) - x), atol=1e-5)


def test_scale_and_rotate_hand_cases():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    one = torch.ones(1)
    assert torch.allclose(affine(x, scale_theta(one, one)), x, atol=1e-5)
    zoom_out = affine(x, scale_theta(2 * one, one))
    assert torch.allclose(zoom_out[0, 0, 0], torch.tensor([0.0, 0, 2, 4, 0]), atol=1e-5)
    assert torch.allclose(affine(x, rotate_theta(torch.tensor([math.pi / 2]))), torch.rot90(x, 1, (2, 3)), atol=1e-4)
    assert torch.allclose(affine(x, rotate_theta(torch.zeros(1))), x, atol=1e-5)


def _after_group_draw(seed: int) -> torch.Generator:
    """The generator of ``DSA(op)(x, gen(seed))`` for a one-group strategy, past its group draw."""
    g = gen(seed)
    torch.randint(1, (1,), generator=g)
    return g


def test_color_draws_brightness_saturation_contrast_in_sequence():
    x = batch()
    g = _after_group_draw(4)
    u = [torch.rand(len(x), generator=g) for _ in range(3)]
    expected = contrast(saturation(brightness(x, (u[0] - 0.5) * 1.0), u[1] * 2.0), u[2] + 0.5)
    assert torch.allclose(DSA("color")(x, gen(4)), expected, atol=1e-6)


def test_scale_and_rotate_draw_their_ranges():
    x = batch()
    g = _after_group_draw(9)
    sx, sy = (torch.rand(len(x), generator=g) * (1.2 - 1 / 1.2) + 1 / 1.2 for _ in range(2))
    assert torch.allclose(DSA("scale")(x, gen(9)), affine(x, scale_theta(sx, sy)), atol=1e-6)
    g = _after_group_draw(9)
    angle = (torch.rand(len(x), generator=g) * 2 - 1) * math.radians(15)
    assert torch.allclose(DSA("rotate")(x, gen(9)), affine(x, rotate_theta(angle)), atol=1e-6)


def test_align_corners_by_hand_on_a_non_square_rotation():
    """A 90-degree turn of a 2x4 image of ones. The source row of output column j is its normalised x coordinate
    read in row pixels: align_corners=False (the DC/DSA/DM code) x = (2j+1)/4 - 1, row ((x+1)*2 - 1)/2 = -0.25,
    0.25, 0.75, 1.25, so the outer columns take a quarter of zero padding: 0.75. align_corners=True (MTT):
    x = -1 + 2j/3, row (x+1)/2 = 0, 1/3, 2/3, 1, all inside: ones."""
    x = torch.ones(1, 1, 2, 4)
    quarter = rotate_theta(torch.tensor([math.pi / 2]))
    edge = torch.tensor([0.75, 1.0, 1.0, 0.75])
    assert torch.allclose(affine(x, quarter, align_corners=False)[0, 0], edge.expand(2, 4), atol=1e-6)
    assert torch.allclose(affine(x, quarter, align_corners=True), x, atol=1e-6)


def test_align_corners_reaches_scale_and_rotate_and_matters_only_off_the_square():
    g = _after_group_draw(9)
    angle = (torch.rand(6, generator=g) * 2 - 1) * math.radians(15)
    wide = batch(h=8, w=12)
    dc_code = DSA("rotate", DSAParams(align_corners=False))
    assert torch.allclose(dc_code(wide, gen(9)), affine(wide, rotate_theta(angle), align_corners=False), atol=1e-6)
    assert not torch.allclose(dc_code(wide, gen(9)), DSA("rotate")(wide, gen(9)), atol=1e-3)
    square = batch()
    for op in ("scale", "rotate"):  # same sampling points on square images: only rounding differs
        assert torch.allclose(DSA(op, DSAParams(align_corners=False))(square, gen(3)), DSA(op)(square, gen(3)),
                              atol=1e-5)
