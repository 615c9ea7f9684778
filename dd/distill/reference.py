"""One outer iteration of each trajectory-matching method, written out top-down.

The engine spreads an iteration over ``dd.distill.engine`` (the outer step), the method hooks
(``dd.distill.methods``) and a swappable unroll (``dd.distill.unroll``) so that it scales; this module states
the same iteration as one plain function per method, in the papers' terms, to be read in one sitting:

    expert   w*        drawn uniformly from the experts
    start    t         drawn uniformly from [min_start_epoch, max_start_epoch)
    student  w_0 = w*_t,  w_{k+1} = w_k - lr * grad_w l(f(DSA(x_{B_k}); w_k), y_{B_k}),  k = 0..N-1
    loss     L = ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2                 (MTT, eq. 2)
    update   x <- x - lr_img * b_x,  lr <- lr - lr_lr * b_lr,  b <- 0.5 b + dL/d(.)   (SGD, momentum 0.5)

with the minibatches B_k consecutive chunks of fresh random permutations of the synthetic set, one DSA seed
per step, and N inner steps differentiated end to end (second order: the full unroll; the checkpointed
unroll gives the same gradient). FTD, DATM, AST and TESLA are written as what they change.

It is deliberately independent of the engine's code: its own flat-parameter view
(``torch.func.functional_call`` on slices), its own inner loop, losses and optimiser steps; only the
augmentation and the random draws (in the engine's order, from the same generator) are shared. The tests
hold the engine to it (``tests/test_wiring.py``: same loss and same updates on small cases). It is slow and
single-process; the engine is what runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from dd.augment import DSA
from dd.device import make_generator
from dd.distill.config import ASTConfig, DATMConfig, FTDConfig, MTTConfig, TESLAConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Synthetic:
    """What the outer loop learns, and the outer optimisers' momentum buffers by name ("img", "lr", "y"; absent
    before the first update). ``ema`` is FTD's moving average of the images (None for the other methods)."""

    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor
    buffers: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    ema: torch.Tensor | None = None


# -- the pieces ----------------------------------------------------------------------------------------
def forward(model: nn.Module, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x; w): the model run on the flat parameter vector ``w``, cut into its parameters in order."""
    params, offset = {}, 0
    for name, p in model.named_parameters():
        params[name] = w[offset:offset + p.numel()].view(p.shape)
        offset += p.numel()
    return functional_call(model, params, (x,))


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE on class ids [B]; on logit labels [B, K] the soft CE -sum_k softmax(y)_k log softmax(z)_k; batch mean."""
    if labels.dim() == 2:
        return -(labels.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    return nn.functional.cross_entropy(logits, labels)


def distance(w: torch.Tensor, w_start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||w - w*_target||^2 / ||w_start - w*_target||^2 (MTT, eq. 2)."""
    return ((w - target) ** 2).sum() / ((w_start - target) ** 2).sum()


def draw_expert(experts: Sequence[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """One expert trajectory [E+1, P], uniformly."""
    return experts[int(torch.randint(len(experts), (1,), generator=generator))]


def draw_start(low: int, high: int, generator: torch.Generator) -> int:
    """t uniform in [low, high)."""
    return int(torch.randint(low, high, (1,), generator=generator))


def draw_plan(num_images: int, batch: int, steps: int, generator: torch.Generator) -> list[tuple[torch.Tensor, int]]:
    """Per inner step, (its minibatch's indices, its DSA seed): consecutive ``batch``-chunks of fresh random
    permutations of the synthetic set."""
    chunks: list[torch.Tensor] = []
    while len(chunks) < steps:
        chunks.extend(torch.randperm(num_images, generator=generator).split(batch))
    seeds = torch.randint(0, 2**62, (steps,), generator=generator).tolist()
    return list(zip(chunks[:steps], seeds, strict=True))


def inner_sgd(model: nn.Module, w_start: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor,
              plan: list[tuple[torch.Tensor, int]], dsa: str, loss: Loss, momentum: float = 0.0,
              first_order: bool = False) -> list[torch.Tensor]:
    """The students w_1..w_N, differentiable w.r.t. x, y and lr: g_k = grad_w loss(f(DSA(x_B); w_k), y_B),
    b_k = momentum * b_{k-1} + g_k (b_{-1} = 0), w_{k+1} = w_k - lr * b_k. With ``first_order`` (TESLA) g_k
    sees w_k as a constant, so the gradient to x, y, lr only flows through each step's own minibatch."""
    augment = DSA(dsa)
    w = w_start.detach().requires_grad_(True)
    b = torch.zeros_like(w)
    students = []
    for index, seed in plan:
        at = w.detach().requires_grad_(True) if first_order else w
        (g,) = torch.autograd.grad(loss(forward(model, at, augment(x[index], make_generator(seed))), y[index]), at,
                                   create_graph=True)
        b = momentum * b + g
        w = w - lr * b
        students.append(w)
    return students


def sgd_step(p: torch.Tensor, grad: torch.Tensor, lr: float, momentum: float,
             buffer: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's SGD: b = grad on the first step, then b = momentum * b + grad; p <- p - lr * b. Returns (p, b)."""
    b = grad if buffer is None else momentum * buffer + grad
    return p - lr * b, b


def outer_update(cfg: MTTConfig, s: Synthetic, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> Synthetic:
    """The outer step from the gradients in ``.grad``: images and lr by SGD(momentum 0.5), learned labels by
    SGD(lr_y, momentum 0.9); the lr guard keeps the new lr within lr_step_limit of the old one."""
    with torch.no_grad():
        buffers = dict(s.buffers)
        images, buffers["img"] = sgd_step(s.images, x.grad, cfg.lr_img, 0.5, s.buffers.get("img"))
        new_lr, buffers["lr"] = sgd_step(s.lr, lr.grad, cfg.lr_lr, 0.5, s.buffers.get("lr"))
        if cfg.lr_step_limit > 0:
            new_lr = new_lr.clamp(s.lr * (1 - cfg.lr_step_limit), s.lr * (1 + cfg.lr_step_limit))
        labels = s.labels
        if y.requires_grad:
            labels, buffers["y"] = sgd_step(s.labels, y.grad, cfg.lr_y, 0.9, s.buffers.get("y"))
    return dataclasses.replace(s, images=images, labels=labels, lr=new_lr, buffers=buffers)


def leaves(s: Synthetic, learn_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh leaves (x, y, lr) of the learned tensors; y requires a gradient only when the labels are learned."""
    return (s.images.detach().clone().requires_grad_(True), s.labels.detach().clone().requires_grad_(learn_labels),
            s.lr.detach().clone().requires_grad_(True))


# -- MTT (Cazenavette et al., CVPR 2022) ---------------------------------------------------------------
def mtt_iteration(cfg: MTTConfig, model: nn.Module, experts: Sequence[torch.Tensor], s: Synthetic,
                  generator: torch.Generator, iteration: int = 0) -> tuple[torch.Tensor, Synthetic]:
    """One outer MTT iteration: (the matching loss, the learned tensors after it)."""
    trajectory = draw_expert(experts, generator)
    t = draw_start(cfg.min_start_epoch, cfg.max_start_epoch, generator)
    w_start = trajectory[t]
    plan = draw_plan(len(s.images), cfg.batch_syn or len(s.images), cfg.syn_steps, generator)
    x, y, lr = leaves(s)
    students = inner_sgd(model, w_start, x, y, lr, plan, cfg.dsa_strategy, cross_entropy)
    loss = distance(students[-1], w_start, trajectory[t + cfg.expert_epochs])
    loss.backward()
    return loss.detach(), outer_update(cfg, s, x, y, lr)


# -- FTD (Du et al., CVPR 2023): MTT on flat (GSAM) experts, plus an EMA of the images ----------------
def ftd_iteration(cfg: FTDConfig, model: nn.Module, experts: Sequence[torch.Tensor], s: Synthetic,
                  generator: torch.Generator, iteration: int = 0) -> tuple[torch.Tensor, Synthetic]:
    """MTT's iteration, then ema <- d * ema + (1 - d) * x (the EMA starts as the initial images)."""
    loss, after = mtt_iteration(cfg, model, experts, s, generator, iteration)
    ema = s.images if s.ema is None else s.ema
    return loss, dataclasses.replace(after, ema=cfg.ema_decay * ema + (1 - cfg.ema_decay) * after.images)


# -- DATM (Guo et al., ICLR 2024) ----------------------------------------------------------------------
def datm_iteration(cfg: DATMConfig, model: nn.Module, experts: Sequence[torch.Tensor], s: Synthetic,
                   generator: torch.Generator, iteration: int = 0) -> tuple[torch.Tensor, Synthetic]:
    """MTT with a start window that grows from current_max_start_epoch T to max_start_epoch T+ over the first
    expansion_end iterations, soft labels learned through the unroll (when lr_y > 0), and no update at all when
    the loss exceeds ``threshold``."""
    upper = cfg.max_start_epoch
    if cfg.current_max_start_epoch is not None:
        T = cfg.current_max_start_epoch
        upper = min(T + (cfg.max_start_epoch - T) * iteration // cfg.expansion_end, cfg.max_start_epoch)
    trajectory = draw_expert(experts, generator)
    t = draw_start(cfg.min_start_epoch, upper, generator)
    w_start = trajectory[t]
    plan = draw_plan(len(s.images), cfg.batch_syn or len(s.images), cfg.syn_steps, generator)
    x, y, lr = leaves(s, learn_labels=s.labels.dim() == 2 and cfg.lr_y > 0)
    students = inner_sgd(model, w_start, x, y, lr, plan, cfg.dsa_strategy, cross_entropy)
    loss = distance(students[-1], w_start, trajectory[t + cfg.expert_epochs])
    loss.backward()
    if cfg.threshold is not None and loss.item() > cfg.threshold:
        return loss.detach(), s
    return loss.detach(), outer_update(cfg, s, x, y, lr)


# -- AST (Shen et al., arXiv 2310.10541) ---------------------------------------------------------------
def ast_iteration(cfg: ASTConfig, model: nn.Module, experts: Sequence[torch.Tensor], s: Synthetic,
                  generator: torch.Generator, iteration: int = 0) -> tuple[torch.Tensor, Synthetic]:
    """MTT with a perturbed start w~_t (each conv weight W <- W + (d / ||d||) * W, d ~ N(0, I)), heavy-ball
    momentum in the inner SGD, the inner loss weighted by w(t) = log_5(t - h + 8) for t >= h, else
    1 / log_5(h - t + 8), h = max_start_epoch // 2, and the students after (N // M) k steps matched to w*_{t+k}
    (k = 1..M-1, weight 1, or k / M when adaptive); every denominator uses w~_t."""
    M, N = cfg.expert_epochs, cfg.syn_steps
    trajectory = draw_expert(experts, generator)
    t = draw_start(cfg.min_start_epoch, cfg.max_start_epoch, generator)
    w_start = trajectory[t]
    if cfg.weight_perturb:
        w_start = w_start.clone()
        offset = 0
        for p in model.parameters():
            if p.dim() == 4:
                d = torch.randn(p.numel(), generator=generator, dtype=w_start.dtype)
                w_start[offset:offset + p.numel()] *= 1 + d / d.norm()
            offset += p.numel()
    plan = draw_plan(len(s.images), cfg.batch_syn or len(s.images), N, generator)
    h = cfg.max_start_epoch // 2
    weight = 1.0
    if cfg.balance_loss:
        weight = math.log(t - h + 8, 5) if t >= h else 1 / math.log(h - t + 8, 5)
    x, y, lr = leaves(s)
    students = inner_sgd(model, w_start, x, y, lr, plan, cfg.dsa_strategy,
                         lambda z, c: weight * cross_entropy(z, c), momentum=cfg.inner_momentum)
    loss = distance(students[-1], w_start, trajectory[t + M])
    if cfg.middle_loss != "none":
        for k in range(1, M):
            coef = k / M if cfg.middle_loss == "adaptive" else 1.0
            loss = loss + coef * distance(students[N // M * k - 1], w_start, trajectory[t + k])
    loss.backward()
    return loss.detach(), outer_update(cfg, s, x, y, lr)


# -- TESLA (Cui et al., ICML 2023) ---------------------------------------------------------------------
def tesla_iteration(cfg: TESLAConfig, model: nn.Module, experts: Sequence[torch.Tensor], s: Synthetic,
                    generator: torch.Generator, iteration: int = 0) -> tuple[torch.Tensor, Synthetic]:
    """MTT with fixed soft labels (an expert's logits / T, assigned at initialisation, not learned) and the
    first-order gradient: each inner gradient g_k sees w_k as a constant."""
    trajectory = draw_expert(experts, generator)
    t = draw_start(cfg.min_start_epoch, cfg.max_start_epoch, generator)
    w_start = trajectory[t]
    plan = draw_plan(len(s.images), cfg.batch_syn or len(s.images), cfg.syn_steps, generator)
    x, y, lr = leaves(s)
    students = inner_sgd(model, w_start, x, y, lr, plan, cfg.dsa_strategy, cross_entropy, first_order=True)
    loss = distance(students[-1], w_start, trajectory[t + cfg.expert_epochs])
    loss.backward()
    return loss.detach(), outer_update(cfg, s, x, y, lr)


ITERATIONS = {"mtt": mtt_iteration, "ftd": ftd_iteration, "datm": datm_iteration, "ast": ast_iteration,
              "tesla": tesla_iteration}
"""Method name -> its reference iteration."""
