"""Expert recipes: GSAM flat experts (FTD/DATM) and AST smooth experts, checked against hand computations."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dd.augment import DSA
from dd.buffer import train_store
from dd.buffer.__main__ import main as buffer_main
from dd.buffer.config import BufferConfig, store_root
from dd.buffer.experts import ExpertRecipe, train_expert
from dd.buffer.gsam import gsam_direction, gsam_step
from dd.buffer.smooth import gradient_penalty, smooth_loss, smooth_step, warmup_factor
from dd.buffer.store import TrajectoryStore, recipe_tag
from dd.device import make_generator
from dd.errors import DDError
from dd.models import create_model
from dd.training import train_epoch


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids OpenMP spin-waits on a shared CPU (100x slower with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- GSAM -----------------------------------------------------------------------------------------

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
C = torch.tensor([1.0, -1.0], dtype=torch.float64)
W0 = torch.tensor([0.5, -1.0], dtype=torch.float64)


class TwoScalars(nn.Module):
    """w = (a, b) held as two parameter tensors, so GSAM's norms must be global across tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(W0[:1].clone())
        self.b = nn.Parameter(W0[1:].clone())

    def w(self) -> torch.Tensor:
        return torch.cat([self.a, self.b])


def quadratic(model, x, y, x_clean):
    """L(w) = 1/2 w^T A w + c^T w, whose gradient is A w + c."""
    w = model.w()
    return 0.5 * w @ A @ w + C @ w


def hand_gsam_direction(rho: float, alpha: float, adaptive: bool) -> torch.Tensor:
    g = A @ W0 + C
    if adaptive:
        e = rho * W0 * W0 * g / ((W0.abs() * g).norm() + 1e-12)
    else:
        e = rho * g / (g.norm() + 1e-12)
    g_p = A @ (W0 + e) + C
    cos = (g @ g_p) / (g.norm() * g_p.norm())
    g_perp = g - cos * g.norm() * g_p / g_p.norm()
    return g_p - alpha * g_perp


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_update_matches_hand_computation(adaptive):
    rho, alpha, lr = 0.5, 0.3, 0.1  # a large rho so that g_p clearly differs from g
    model = TwoScalars()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    gsam_step(optimizer, rho, alpha, adaptive, quadratic)(model, None, None, None)
    d = hand_gsam_direction(rho, alpha, adaptive)
    assert torch.allclose(model.w().detach(), W0 - lr * d, atol=1e-12)
    assert not torch.allclose(d, A @ W0 + C, atol=1e-3), "the test must tell GSAM from plain SGD"


def test_gsam_base_sgd_keeps_weight_decay_and_sam_is_alpha_zero():
    rho, lr, wd = 0.5, 0.1, 0.2
    model = TwoScalars()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    gsam_step(optimizer, rho, 0.0, True, quadratic)(model, None, None, None)
    g = A @ W0 + C
    g_p = A @ (W0 + rho * W0 * W0 * g / (W0.abs() * g).norm()) + C  # SAM: d = g_p
    assert torch.allclose(model.w().detach(), W0 - lr * (g_p + wd * W0), atol=1e-12)


def test_gsam_direction_removes_alpha_times_the_orthogonal_part():
    g, g_p = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([3.0, 0.0], dtype=torch.float64)
    # the part of g orthogonal to g_p = (3, 0) is (0, 2), so d = g_p - alpha * (0, 2)
    assert torch.allclose(gsam_direction(g, g_p, 0.5), torch.tensor([3.0, -1.0], dtype=torch.float64))
    assert torch.equal(gsam_direction(g, g_p, 0.0), g_p)


def bn_model() -> nn.Module:
    return create_model("ConvNet", 1, 10, (8, 8), seed=0, width=8, depth=1, norm="batchnorm")


def test_batchnorm_statistics_updated_once_per_step():
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    reference = bn_model().train()
    with torch.no_grad():
        reference(x)  # one update of the running statistics, from the first pass
    expected = {k: v for k, v in reference.state_dict().items() if "running" in k or "tracked" in k}
    for name, make_step in [
        ("gsam", lambda opt: gsam_step(opt, 0.5, 0.3, True, smooth_loss)),
        ("smooth with GP", lambda opt: smooth_step(opt, 0.5, gp_lambda=2.0)),
    ]:
        model = bn_model()
        make_step(torch.optim.SGD(model.parameters(), lr=0.1))(model, x, y, x)
        state = model.state_dict()
        for key, value in expected.items():
            assert torch.allclose(state[key], value), f"{name}: {key} was updated by the extra pass"
        assert state["features.1.num_batches_tracked"].item() == 1


# --- AST smooth experts ---------------------------------------------------------------------------


def test_clipping_loss_factors():
    assert [warmup_factor(e) for e in (0, 1, 9, 10, 30)] == pytest.approx([0.5, 0.55, 0.95, 1.0, 1.0])
    recipe = ExpertRecipe(loss_warmup=True)
    assert recipe.loss_scale(1) == pytest.approx(0.55) and ExpertRecipe().loss_scale(1) == 1.0


def linear_model() -> nn.Module:
    """f(x) = W flatten(x) + b on [B, C=2, H=1, W=2]; S = sum f has dS/dx_b = column sums of W."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 2.0, 0.0], [2.0, 0.0, 2.0, 1.0]]))
        model[1].bias.fill_(0.3)
    return model


def test_gradient_penalty_of_a_linear_model():
    # column sums (3, 0, 4, 1) -> channel 0 = (3, 0), channel 1 = (4, 1) over the two pixels;
    # per-pixel norms over channels 5 and 1, so GP = lambda * mean((5-1)^2, (1-1)^2) = 8 * lambda
    model = linear_model()
    gp = gradient_penalty(model, torch.randn(3, 2, 1, 2), lam=2.0)
    assert gp.item() == pytest.approx(16.0)
    (grad_w,) = torch.autograd.grad(gp, model[1].weight)  # differentiable in the parameters
    assert grad_w.abs().sum() > 0


class SquareModel(nn.Module):
    """f_k(x) = sum_j W_kj x_j^2: dS/dx_j = 2 x_j * (column sum of W)_j depends on x."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, 0.5, -1.0, 2.0], [0.5, 1.0, 1.0, -1.0]]))

    def forward(self, x):
        return (x.flatten(1) ** 2) @ self.weight.T


def test_smooth_loss_scales_ce_and_adds_gp_on_the_clean_batch():
    model = SquareModel()
    x_clean = torch.tensor([[[[1.0, -0.5]], [[0.25, 2.0]]]])  # [1, 2, 1, 2]
    x_aug = x_clean.flip(-1) + 0.1
    y = torch.tensor([1])
    colsum = model.weight.detach().sum(0)  # (1.5, 1.5, 0, 1)
    grad = (2 * x_clean.flatten(1) * colsum).view(1, 2, 1, 2)
    gp = 2.0 * ((grad.norm(dim=1) - 1) ** 2).mean()
    expected = 0.6 * F.cross_entropy(model(x_aug), y) + gp
    assert smooth_loss(model, x_aug, y, x_clean, scale=0.6, gp_lambda=2.0).item() == pytest.approx(expected.item())
    assert smooth_loss(model, x_aug, y, x_clean).item() == pytest.approx(F.cross_entropy(model(x_aug), y).item())


def test_lr_decays_once_after_epoch_e_half_plus_one():
    recipe = ExpertRecipe(lr=0.1, epochs=5, batch_size=64, lr_decay_epoch=5 // 2 + 1, lr_decay_factor=0.6,
                          momentum=0.9)
    assert [recipe.schedule().lr_at(e) for e in range(5)] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.06])
    assert not recipe.schedule().reset_at_decay  # the expert keeps its optimiser (and momentum) at the decay
    assert ExpertRecipe(lr=0.1).schedule().lr_at(40) == 0.1
    generator = torch.Generator().manual_seed(0)
    train = (torch.randn(128, 1, 8, 8, generator=generator), torch.randint(0, 10, (128,), generator=generator))
    _, record = train_expert("MLP", 1, 10, (8, 8), train, train, recipe, seed=0)
    assert record["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.06])


# --- recipes in the store and the CLI -------------------------------------------------------------


def test_recipe_fields_reach_the_folder_name():
    def root(**changes):
        return store_root("b", "digits", "ConvNet", BufferConfig(**changes).recipe().to_dict())

    gsam = dict(optimizer="gsam", rho=0.01, alpha=0.3)
    assert root(**gsam) != root(**{**gsam, "rho": 0.02}) != root(**{**gsam, "alpha": 1.0})
    assert root(**gsam) != root(**gsam, adaptive=False)
    assert len({root(gp_lambda=g) for g in (0.0, 1.0, 2.0)}) == 3
    assert root(**gsam).name.startswith("gsam-rho0.01-a0.3-lr0.01-")
    ast = root(lr_decay_epoch=26, loss_warmup=True, gp_lambda=2.0)
    assert "-decay26x0.6-warmup-gp2_" in ast.name
    # a plain-SGD recipe hashes exactly as before GSAM/AST existed, so existing stores keep their folder
    before = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 256,
              "epochs": 50, "dsa_strategy": "color_crop_cutout_flip_scale_rotate", "preprocess": "standard"}
    assert root().name == recipe_tag(before)
    assert root(rho=0.5).name == recipe_tag(before), "GSAM settings do not affect an SGD recipe"


@pytest.mark.e2e
def test_gsam_buffer_end_to_end(tmp_path):
    root = train_store(BufferConfig(optimizer="gsam", rho=0.01, alpha=0.3, adaptive=False, model="MLP", num_experts=2,
                                    epochs=2, batch_size=256, test_every=0, device="cpu", buffer_dir=str(tmp_path)))
    (manifest,) = tmp_path.glob("digits/MLP/*/manifest.json")
    assert manifest.parent == root
    assert manifest.parent.name.startswith("gsam-rho0.01-a0.3-nonadaptive-")
    recipe = json.loads(manifest.read_text())["recipe"]
    assert {k: recipe[k] for k in ("optimizer", "rho", "alpha", "adaptive")} == {
        "optimizer": "gsam", "rho": 0.01, "alpha": 0.3, "adaptive": False}
    store = TrajectoryStore.open(manifest.parent)
    assert store.completed() == [0, 1]
    trajectory = store.read_expert(0)
    assert trajectory.shape[0] == 3 and ((trajectory[1:] - trajectory[:-1]).norm(dim=1) > 0).all()


@pytest.mark.e2e
def test_ast_recipe_recorded_in_the_manifest(tmp_path):
    train_store(BufferConfig(lr=0.003, momentum=0.9, weight_decay=1e-3, lr_decay_epoch=1, loss_warmup=True,
                             gp_lambda=2.0, model="MLP", num_experts=1, epochs=3, test_every=0, device="cpu",
                             buffer_dir=str(tmp_path)))
    (manifest,) = tmp_path.glob("digits/MLP/*/manifest.json")
    recipe = json.loads(manifest.read_text())["recipe"]
    assert {k: recipe[k] for k in ("optimizer", "lr_decay_epoch", "lr_decay_factor", "loss_warmup", "gp_lambda")} \
        == {"optimizer": "sgd", "lr_decay_epoch": 1, "lr_decay_factor": 0.6, "loss_warmup": True, "gp_lambda": 2}
    record = TrajectoryStore.open(manifest.parent).records()[0]
    assert record["lr"] == pytest.approx([0.003, 0.003, 0.0018])


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "adam"], "unknown --optimizer 'adam'; choose sgd or gsam"),
    (["--optimizer", "gsam", "--rho=-0.1"], "--rho must be >= 0, got -0.1"),
    (["--alpha=-1"], "--alpha must be >= 0"),
    (["--gp-lambda=-2"], "--gp-lambda must be >= 0"),
    (["--epochs", "10", "--lr-decay-epoch", "9"], "--lr-decay-epoch must be in 0..8 for 10 epochs"),
    (["--lr-decay-factor", "0"], "--lr-decay-factor must be positive"),
])
def test_bad_recipe_values(tmp_path, flags, message):
    with pytest.raises(DDError, match=message.replace(".", "\\.")) as info:
        buffer_main([*flags, "--buffer-dir", str(tmp_path)])
    assert "\n" not in str(info.value)


def test_step_hook_gets_the_augmented_and_the_clean_batch():
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8)
    seen = []
    train_epoch(nn.Identity(), images, labels, None, 4, DSA("flip"), make_generator(0),
                lambda m, x, y, x_clean: seen.append((x, y, x_clean)))
    assert len(seen) == 2
    for x, y, x_clean in seen:
        assert torch.equal(x_clean, images[y])  # the un-augmented batch
        for x_i, c_i in zip(x, x_clean, strict=True):  # each sample flipped or not by DSA
            assert torch.equal(x_i, c_i) or torch.equal(x_i, c_i.flip(-1))
