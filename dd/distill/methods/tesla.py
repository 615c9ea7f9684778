"""TESLA: Scaling Up Dataset Distillation to ImageNet-1K with Constant Memory
(Cui, Wang, Si, Hsieh; ICML 2023, arXiv 2211.10586).

TESLA is MTT (same experts, matching loss and outer optimisers) with two changes. Top-down, an iteration
(``dd.distill.reference.tesla_iteration``) is MTT's with the soft CE on fixed labels y and each inner gradient
g_k = grad_w CE_soft(f(DSA(x_B); w), y_B) at w = w_k held constant, so that dL/dx = sum_k (dL/dw_{k+1}) d(-lr g_k)/dx:

1. soft label assignment: the synthetic images are labelled by an expert, not learned; a label is
   softmax(f(x; w*) / T) with w* the expert parameters at the farthest target epoch the matching uses,
   epoch max_start_epoch - 1 + expert_epochs (the authors' code labels with the target expert w*_{t+M}
   and a plain softmax, T = 1; ``label_temperature`` sets T). They are stored as logits z / T, which the
   soft cross-entropy of the inner loop and of every evaluation protocol turns into softmax(z / T);
2. the constant-memory gradient (``--unroll tesla``, ``dd.distill.unroll.tesla_unroll``): the inner
   gradient of step i sees the student's parameters as a constant, so each step's contribution to the
   image gradient needs that step's graph only; the presets select it.

Unlike the authors' code: the labels are assigned once, to the initial images, and stay fixed (their
code relabels every iteration with that iteration's target expert, on its ImageNet path only: the other
path concatenates an empty list), so the saved set holds the labels it was distilled with.
"""

from __future__ import annotations

import torch

from dd.distill.config import TESLAConfig
from dd.distill.context import Context
from dd.distill.engine import Distiller
from dd.distill.expert_labels import complete_experts, expert_logits
from dd.distill.methods.base import Method
from dd.distill.registry import register_method


def label_epoch(max_start_epoch: int, expert_epochs: int) -> int:
    """The expert epoch whose network labels the images: the last target t + M, t < max_start_epoch."""
    return max_start_epoch - 1 + expert_epochs


def expert_soft_labels(ctx: Context, images: torch.Tensor) -> torch.Tensor:
    """Logits [N, K] / T of ``images`` [N, C, H, W] under the first complete expert at ``label_epoch``."""
    cfg = ctx.config
    epoch = label_epoch(cfg.max_start_epoch, cfg.expert_epochs)
    return expert_logits(ctx, images, complete_experts(ctx)[0], epoch) / cfg.label_temperature


@register_method("tesla", config=TESLAConfig, run=Distiller)
class TESLA(Method):
    """MTT with fixed soft labels assigned by an expert, and TESLA's first-order unroll under --unroll auto."""

    unroll = "tesla"

    def init_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Soft labels [N, K] (logits / T) from the expert at the last target epoch; not learned."""
        return expert_soft_labels(self.ctx, images)
