"""AST: Alignment with Smooth and high-quality expert Trajectories (Shen, Yang, Lam; arXiv 2310.10541).

AST matches experts trained with SGD-momentum, weight decay and a gradient penalty (smooth experts,
``dd.buffer``) and changes MTT's distillation in five places, each optional except the second. Top-down,
an iteration (``dd.distill.reference.ast_iteration``) is

    t ~ U[min_start_epoch, max_start_epoch),  w~_t = w*_t with perturbed conv weights (5.)
    b_k = mom * b_{k-1} + grad_w w(t) CE(f(DSA(x_B); w_k), y_B),  w_{k+1} = w_k - lr * b_k,  w_0 = w~_t   (2., 3.)
    L = ||w_N - w*_{t+M}||^2 / ||w~_t - w*_{t+M}||^2 + sum_k c_k ||w_{m_k} - w*_{t+k}||^2 / ||w~_t - w*_{t+k}||^2  (4.)
    x, lr <- MTT's outer step

and the five changes are:

1. representative initialisation (``--pix-init kmeans``): per class, k-means with k = ipc on the
   logits of a final-epoch expert, and the real image nearest to each centroid;
2. heavy-ball momentum in the inner loop: b_t = mom * b_{t-1} + g_t, w_{t+1} = w_t - lr * b_t;
3. a balanced inner loss (``--balance-loss``): the inner CE is scaled by w(s) of the start epoch s;
4. intermediate matching (``--middle-loss agg|adaptive``): the student after (N//E)k inner steps is
   also matched to the expert at epoch s+k, k = 1..E-1;
5. weight perturbation (``--weight-perturb``): the start conv weights get relative Gaussian noise,
   and the perturbed start is used in every normalising denominator.

Unlike the reference code, the k-means init works for every IPC (it picked 0 images below IPC 10),
its picks are unique, and the features are computed under no_grad in eval mode.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dd.augment import DSA
from dd.distill.config import ASTConfig
from dd.distill.context import Context
from dd.distill.engine import Distiller
from dd.distill.expert_labels import complete_experts, expert_logits
from dd.distill.init import class_pools, register_init
from dd.distill.methods.base import Method, normalized_distance
from dd.distill.registry import register_method
from dd.distill.unroll import Student
from dd.functional import ParamSpec, param_spec

if TYPE_CHECKING:
    from collections.abc import Callable


# -- 1. representative initialisation ---------------------------------------------------------------
def nearest_unique(centers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """For each centre [k, D] in order, the index of the nearest row of ``features`` [n, D] (n >= k)
    not already taken by an earlier centre; returns [k] distinct indices."""
    order = torch.cdist(centers, features).argsort(dim=1)
    taken: list[int] = []
    for row in order.tolist():
        taken.append(next(j for j in row if j not in taken))
    return torch.tensor(taken, dtype=torch.long)


@register_init("kmeans")
def kmeans_init(ctx: Context, generator: torch.Generator) -> torch.Tensor:
    """Per class, k-means (k = ipc, 10 restarts) on expert logits, then the real image nearest to each
    centroid (unique); the k-means seed is drawn from ``generator``."""
    from sklearn.cluster import KMeans

    pools = class_pools(ctx)
    features = expert_logits(ctx, ctx.data.train_images, complete_experts(ctx)[0], batch_size=512).cpu().double()
    picks = []
    for idx in pools:
        feats = features[idx]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        kmeans = KMeans(n_clusters=ctx.config.ipc, n_init=10, random_state=seed).fit(feats.numpy())
        picks.append(idx[nearest_unique(torch.from_numpy(kmeans.cluster_centers_), feats)])
    images = ctx.data.train_images
    return images[torch.cat(picks).to(images.device)].clone()


# -- 2. heavy-ball momentum in the inner loop --------------------------------------------------------
class MomentumStudent(Student):
    """Inner SGD with heavy-ball momentum, state (w, b): b_0 = g_0; b_t = mom * b_{t-1} + g_t;
    w_{t+1} = w_t - lr * b_t (no dampening, no weight decay)."""

    def __init__(self, model: nn.Module, augment: DSA,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], momentum: float) -> None:
        super().__init__(model, augment, loss_fn)
        self.momentum = momentum

    def init_state(self, w0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(w0, b = 0), so that the first step's buffer is its gradient."""
        return (w0, torch.zeros_like(w0))

    def update(self, state: tuple[torch.Tensor, ...], grad: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One heavy-ball step with minibatch gradient ``grad``."""
        w, b = state
        b = self.momentum * b + grad
        return (w - lr * b, b)


# -- 3. balanced inner loss --------------------------------------------------------------------------
def balanced_weight(start: int, max_start_epoch: int) -> float:
    """AST's inner-loss weight of start epoch s, with h = M // 2:
    log_5(s - h + 8) if s >= h, else 1 / log_5(h - s + 8) (smaller for early, larger for late starts)."""
    half = max_start_epoch // 2
    if start >= half:
        return math.log(start - half + 8, 5)
    return 1.0 / math.log(half - start + 8, 5)


# -- 4. intermediate matching ------------------------------------------------------------------------
def middle_steps(syn_steps: int, expert_epochs: int) -> list[int]:
    """Inner steps m_k = (N // E) * k, k = 1..E-1, whose student is matched to the expert at epoch s+k."""
    return [(syn_steps // expert_epochs) * k for k in range(1, expert_epochs)]


def middle_matching_loss(captured: list[torch.Tensor], w_start: torch.Tensor, trajectory: torch.Tensor,
                         start: int, expert_epochs: int, mode: str) -> torch.Tensor:
    """L_0 + sum_k c_k L_k with L_k = ||w_{m_k} - w*_{s+k}||^2 / ||w~_s - w*_{s+k}||^2 for the captured
    students [w_{m_1}, ..., w_{m_{E-1}}, w_N] (only [w_N] for mode "none"); c_k = 1 ("agg") or k/E
    ("adaptive"); L_0 matches w_N to w*_{s+E}; w~_s = ``w_start``, the possibly perturbed start."""
    loss = normalized_distance(captured[-1], w_start, trajectory[start + expert_epochs])
    for k, w_k in enumerate(captured[:-1], start=1):
        coef = k / expert_epochs if mode == "adaptive" else 1.0
        loss = loss + coef * normalized_distance(w_k, w_start, trajectory[start + k])
    return loss


# -- 5. weight perturbation --------------------------------------------------------------------------
def perturb_conv_weights(w: torch.Tensor, spec: ParamSpec, generator: torch.Generator) -> torch.Tensor:
    """A copy of flat ``w`` [P] where every 4-D parameter W becomes W + (d / ||d||_F) * W, d ~ N(0, I)
    drawn from ``generator`` (CPU); other parameters (biases, norms, FC) are unchanged."""
    out = w.clone()
    offset = 0
    for shape in spec.shapes:
        n = math.prod(shape)
        if len(shape) == 4:
            d = torch.randn(n, generator=generator, dtype=w.dtype).to(w.device, non_blocking=True)
            out[offset:offset + n] *= 1 + d / d.norm()
        offset += n
    return out


@register_method("ast", config=ASTConfig, run=Distiller)
class AST(Method):
    """MTT with a momentum student, plus the optional AST terms selected in the config."""

    protocol = "ast"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.spec = param_spec(ctx.model)

    def make_student(self, model: nn.Module, augment: DSA, start: int) -> Student:
        """Heavy-ball inner SGD with momentum ``inner_momentum`` on the inner loss of start epoch s."""
        return MomentumStudent(model, augment, functools.partial(self.inner_loss, start=start),
                               self.ctx.config.inner_momentum)

    def start_params(self, trajectory: torch.Tensor, start: int, generator: torch.Generator) -> torch.Tensor:
        """The expert at epoch s, its conv weights perturbed under ``weight_perturb``."""
        w = trajectory[start]
        return perturb_conv_weights(w, self.spec, generator) if self.ctx.config.weight_perturb else w

    def inner_loss(self, logits: torch.Tensor, labels: torch.Tensor, start: int) -> torch.Tensor:
        """The MTT inner loss times w(s) of the start epoch s (1 without ``balance_loss``)."""
        cfg = self.ctx.config
        weight = balanced_weight(start, cfg.max_start_epoch) if cfg.balance_loss else 1.0
        return weight * super().inner_loss(logits, labels, start)

    def capture_steps(self) -> list[int]:
        """The intermediate steps m_k (with ``middle_loss``) and the end point N."""
        cfg = self.ctx.config
        middle = middle_steps(cfg.syn_steps, cfg.expert_epochs) if cfg.middle_loss != "none" else []
        return [*middle, cfg.syn_steps]

    def match_loss(self, captured: list[torch.Tensor], w_start: torch.Tensor, trajectory: torch.Tensor,
                   start: int) -> torch.Tensor:
        """End-point matching plus the weighted intermediate matches."""
        cfg = self.ctx.config
        return middle_matching_loss(captured, w_start, trajectory, start, cfg.expert_epochs, cfg.middle_loss)
