"""GSAM flat experts: the expert optimiser of FTD (Du et al., CVPR 2023, arXiv 2211.11004), reused by DATM.

GSAM (Zhuang et al., ICLR 2022, "Surrogate Gap Guided Sharpness-Aware Minimization") with the ASAM
perturbation (Kwon et al., ICML 2021). What differs from an MTT expert: every step takes two
forward/backward passes on the SAME augmented batch, and SGD steps along a direction that prefers
flat minima instead of along the plain gradient. One step, with all norms global over every parameter:

    g     = grad L(w)
    e     = rho * w*w*g / (|| |w|*g || + 1e-12)     (adaptive, the reference default)
            rho * g / (||g|| + 1e-12)               (non-adaptive)
    g_p   = grad L(w + e)                            (BatchNorm running statistics left untouched)
    g_perp = g - (<g, g_p> / (||g|| ||g_p||)) * ||g|| * g_p / ||g_p||
    d     = g_p - alpha * g_perp                     (alpha = 0 is SAM)
    w     <- base SGD step from w with gradient d   (its lr, momentum and weight decay)

rho is constant: the reference ties rho to the lr by a proportion scheduler that is flat for a constant
lr. Published runs use rho = 0.01 and alpha = 0.3 (DATM) or 0.3/1 (FTD Table 7); the reference's own
defaults (rho 2.0, alpha 0.4, a ``type=bool`` adaptive flag) are not used here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dd.training import StepFn, frozen_running_stats

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(model, x_aug, y, x_clean)``: the scalar training loss of one batch."""

_EPS = 1e-12  # the reference's eps in the perturbation norm
_TINY = 1e-20  # guards the cosine and the projection against a zero gradient


def perturbation(weights: torch.Tensor, grad: torch.Tensor, rho: float, adaptive: bool) -> torch.Tensor:
    """The ascent step e for flat weights w and gradient g [P]: ``rho*w*w*g/(|| |w|*g ||+eps)`` when
    ``adaptive`` (ASAM), else ``rho*g/(||g||+eps)``."""
    if adaptive:
        return rho * weights * weights * grad / ((weights.abs() * grad).norm() + _EPS)
    return rho * grad / (grad.norm() + _EPS)


def gsam_direction(grad: torch.Tensor, grad_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """The update direction ``d = g_p - alpha * g_perp`` from g = grad L(w) and g_p = grad L(w+e) [P],
    where g_perp is the part of g orthogonal to g_p."""
    g_norm, gp_norm = grad.norm(), grad_p.norm()
    cosine = torch.dot(grad, grad_p) / (g_norm * gp_norm + _TINY)
    g_perp = grad - cosine * g_norm * grad_p / (gp_norm + _TINY)
    return grad_p - alpha * g_perp


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def gsam_step(optimizer: torch.optim.Optimizer, rho: float, alpha: float, adaptive: bool, loss: LossFn) -> StepFn:
    """A ``train_epoch`` step: one GSAM update of the parameters in ``optimizer`` (a base SGD) on
    ``loss``. The perturbed pass leaves BatchNorm running statistics alone, so they are
    updated once per step, by the first pass."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    sizes = [p.numel() for p in params]

    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_clean: torch.Tensor) -> None:
        grad = _flat_grad(loss(model, x, y, x_clean), params)
        with torch.no_grad():
            weights = torch.cat([p.reshape(-1) for p in params])
            e = perturbation(weights, grad, rho, adaptive)
            for p, w_p in zip(params, (weights + e).split(sizes), strict=True):
                p.copy_(w_p.view_as(p))
        with frozen_running_stats(model):
            grad_p = _flat_grad(loss(model, x, y, x_clean), params)
        direction = gsam_direction(grad, grad_p, alpha)
        with torch.no_grad():
            for p, w_p, d_p in zip(params, weights.split(sizes), direction.split(sizes), strict=True):
                p.copy_(w_p.view_as(p))  # restore w exactly, not w + e - e
                p.grad = d_p.view_as(p).clone()
        optimizer.step()

    return step
