"""Smooth experts: the expert recipe of AST (Shen, Yang, Lam, arXiv 2310.10541, "Alignment with Smooth
and High-Quality Expert Trajectories").

What differs from an MTT expert (plain SGD, constant lr): SGD with momentum 0.9 and weight decay 1e-3
at lr 0.003, one lr decay x0.6 (``ExpertRecipe.lr_at``), and the loss below, built here:

    L = c_e * CE(f(DSA(x)), y) + GP
    c_e = 0.5, 0.55, ..., 0.95 for epochs e = 0..9 (0-based), 1 afterwards   ("clipping loss" warm-up)
    GP  = lambda * mean_{b,h,w} (|| dS/dx [b, :, h, w] ||_2 - 1)^2,   S = sum_{b,k} f_k(x)_b

GP is taken on the CLEAN (un-augmented) batch x, with the norm over channels at each pixel, and it is
not scaled by c_e. The weight decay lives in the optimiser, so c_e does not scale it either.

Deliberate difference from the reference: its GP pass in train mode updates BatchNorm running
statistics a second time per step; here that pass leaves them alone (ConvNet's instance norm has none).
"""

from __future__ import annotations

import torch
from torch import nn

from dd.training import StepFn, classification_loss, frozen_running_stats

WARMUP_EPOCHS = 10  # c_e rises from 0.5 by 0.05 per epoch over the first 10 epochs


def warmup_factor(epoch: int) -> float:
    """The clipping-loss factor c_e of 0-based ``epoch``: 0.5 + 0.05 * epoch for epoch < 10, else 1."""
    return 0.5 + 0.05 * epoch if epoch < WARMUP_EPOCHS else 1.0


def gradient_penalty(model: nn.Module, x: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * mean_{b,h,w} (||dS/dx[b,:,h,w]||_2 - 1)^2`` with S the sum of all logits of ``model`` on
    ``x`` [B, C, H, W]; differentiable in the model's parameters (create_graph)."""
    x = x.detach().requires_grad_(True)
    with frozen_running_stats(model):
        total = model(x).sum()
    (grad,) = torch.autograd.grad(total, x, create_graph=True)
    return lam * ((grad.norm(p=2, dim=1) - 1) ** 2).mean()


def smooth_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor,
                scale: float = 1.0, gp_lambda: float = 0.0) -> torch.Tensor:
    """``scale * CE(model(x), y)`` plus, when ``gp_lambda`` > 0, the gradient penalty on ``x_clean``.
    With the defaults this is the plain MTT cross-entropy."""
    loss = classification_loss(model(x), y)
    if scale != 1.0:
        loss = scale * loss
    if gp_lambda > 0:
        loss = loss + gradient_penalty(model, x_clean, gp_lambda)
    return loss


def smooth_step(optimizer: torch.optim.Optimizer, scale: float = 1.0, gp_lambda: float = 0.0) -> StepFn:
    """A ``train_epoch`` step: one ``optimizer`` step on ``smooth_loss`` with this epoch's ``scale``."""

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        smooth_loss(model, x, y, x_clean, scale, gp_lambda).backward()
        optimizer.step()

    return step
