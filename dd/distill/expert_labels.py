"""Experts as classifiers: the network of a stored expert at one epoch, and its logits of a batch of images.

DATM picks real images its experts classify correctly and initialises soft labels from their logits, TESLA
labels the synthetic images with an expert's softened logits, and AST clusters the real images' expert logits;
all three read the store through these functions.
"""

from __future__ import annotations

import torch
from torch import nn

from dd.distill.context import Context
from dd.errors import DDError
from dd.functional import load_flat_
from dd.models import create_model


def complete_experts(ctx: Context) -> list[int]:
    """The finished experts of the store, in order; at least one."""
    experts = ctx.store.completed()
    if not experts:
        raise DDError(f"the buffer at {ctx.store.root} holds no finished expert; run python -m dd.buffer first")
    return experts


def expert_network(ctx: Context, index: int, epoch: int = -1) -> nn.Module:
    """A fresh eval-mode copy of the student model holding the parameters of expert ``index`` at ``epoch``
    (the final epoch by default)."""
    cfg, spec = ctx.config, ctx.data.spec
    net = create_model(cfg.model, spec.channels, spec.num_classes, spec.size, seed=cfg.seed)
    net = net.to(ctx.device).eval()
    load_flat_(net, ctx.store.read_expert(index)[epoch].to(ctx.device))
    return net


def logits_of(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits [N, K] of ``images`` [N, C, H, W], in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([net(x) for x in images.split(batch_size)])


def expert_logits(ctx: Context, images: torch.Tensor, index: int, epoch: int = -1,
                  batch_size: int = 256) -> torch.Tensor:
    """Logits [N, K] of ``images`` under expert ``index`` at ``epoch`` (``expert_network``, ``logits_of``)."""
    return logits_of(expert_network(ctx, index, epoch), images, batch_size)
