"""DC and DSA: dataset condensation by gradient matching (Zhao, Mopuri, Bilen, ICLR 2021), with
differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

Each iteration initialises a network theta and runs ``outer_loop`` rounds of

    L = sum_c D(grad_theta CE(theta; A(real_c)), grad_theta CE(theta; A(S_c)))     (one real batch per class)
    S <- SGD step on L                                                            (images only)
    theta <- ``inner_loop`` epochs of SGD(lr_net) on the synthetic set           (not after the last round)

where D is the layer-wise distance of the DC code (``layer_distance``) and A is the identity (dc) or one DSA
draw shared by the real and the synthetic batch of the class (dsa, ``dd.distill.condense.siamese``); the
network's epochs on the synthetic set augment each batch with its own DSA draw (dsa) or not (dc). A network
with BatchNorm takes its running statistics from 16 real images per class before each round and keeps them
fixed during the matching, as the reference. ``outer_loop`` and ``inner_loop`` default to the reference's
values per IPC (``LOOPS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dd.config import opt
from dd.distill.condense import CondenseConfig, Condenser, siamese
from dd.distill.registry import register_method
from dd.errors import DDError
from dd.functional import has_batchnorm
from dd.training import train_epoch

LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""(outer_loop, inner_loop) by IPC: ``get_loops`` of the DC code (utils.py)."""

BN_IMAGES_PER_CLASS = 16  # real images per class that set the BatchNorm statistics (the reference's BNSizePC)


@dataclass
class DCConfig(CondenseConfig):
    """DC: gradient matching without augmentation."""

    outer_loop: int | None = opt(None, "matching rounds (image updates) per fresh network (default: the DC code's "
                                 "value for the IPC: 1, 10, 20, 30, 40, 50 for IPC 1, 10, 20, 30, 40, 50)",
                                 bounds="positive")
    inner_loop: int | None = opt(None, "epochs of the network on the synthetic set between rounds (default: the DC "
                                 "code's value for the IPC: 1, 50, 25, 20, 15, 10)", bounds="positive")
    batch_train: int = opt(256, "batch size of the network's epochs on the synthetic set", bounds="positive")

    def check(self) -> None:
        loops(self)


@dataclass
class DSAConfig(DCConfig):
    """DSA: DC with the siamese augmentation in the matching and the network updates."""



def loops(config: DCConfig) -> tuple[int, int]:
    """(outer_loop, inner_loop): the flags, else the DC code's values for the IPC."""
    outer, inner = LOOPS.get(config.ipc, (None, None))
    outer = config.outer_loop or outer
    inner = config.inner_loop or inner
    if outer is None or inner is None:
        raise DDError(f"the DC code defines the loop counts for IPC {', '.join(map(str, LOOPS))} only; pass "
                      f"--outer-loop and --inner-loop for --ipc {config.ipc}")
    return outer, inner


def layer_distance(g_syn: torch.Tensor, g_real: torch.Tensor) -> torch.Tensor:
    """The DC code's ``distance_wb``: sum over output units of 1 - cos(g_syn[i], g_real[i]), the gradient of a
    weight seen as rows [out, rest] (conv [out, in, h, w] -> [out, in*h*w]; a 3-d one [C, h, w] -> [C, h*w]; a
    linear [out, in] as it is), with 1e-6 added to the product of the norms. 1-d gradients (biases, norm
    weights) count 0."""
    if g_real.dim() == 1:
        return g_real.new_zeros(())
    a, b = g_syn.flatten(1), g_real.flatten(1)
    return (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)).sum()


def gradient_match_loss(model: nn.Module, real: torch.Tensor, syn: torch.Tensor, label: int) -> torch.Tensor:
    """sum over parameters of ``layer_distance(grad CE(model(syn), label), grad CE(model(real), label))``,
    differentiable with respect to ``syn`` (the real gradient is a constant)."""
    params = [p for p in model.parameters() if p.requires_grad]
    target = lambda x: torch.full((x.shape[0],), label, device=x.device)  # noqa: E731
    g_real = torch.autograd.grad(F.cross_entropy(model(real), target(real)), params)
    g_syn = torch.autograd.grad(F.cross_entropy(model(syn), target(syn)), params, create_graph=True)
    return sum(layer_distance(gs, gr.detach()) for gs, gr in zip(g_syn, g_real, strict=True))


@register_method("dsa", config=DSAConfig)
@register_method("dc", config=DCConfig)
class GradMatch(Condenser):
    """One DC or DSA run (module docstring)."""

    def __init__(self, config: DCConfig, argv: Sequence[str] | None = None) -> None:
        super().__init__(config, argv)
        self.outer_loop, self.inner_loop = loops(config)
        self.augment = self.dsa if config.method == "dsa" else None

    def freeze_batchnorm(self, model: nn.Module) -> None:
        """Running statistics from 16 real images per class, then BatchNorm layers in eval mode."""
        model.train()
        real = torch.cat([self.real_batch(c, BN_IMAGES_PER_CLASS) for c in range(len(self.pools))])
        with torch.no_grad():
            model(real)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def match(self, model: nn.Module) -> torch.Tensor:
        """The matching loss summed over classes on ``model``."""
        loss = self.images.new_zeros(())
        for c in range(len(self.pools)):
            real, syn = self.real_batch(c, self.config.batch_real), self.synthetic(c)
            if self.augment is not None:
                real, syn = siamese(self.augment, [real, syn], self.generator)
            loss = loss + gradient_match_loss(model, real, syn, c)
        return loss

    def step(self) -> torch.Tensor:
        """One iteration on a fresh network; returns the loss averaged over classes and rounds."""
        cfg = self.config
        model = self.fresh_network()
        model_optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_net)
        bn = has_batchnorm(model)
        total = self.images.new_zeros(())
        for round_ in range(self.outer_loop):
            if bn:
                self.freeze_batchnorm(model)
            loss = self.match(model)
            self.outer_step(loss)
            total += loss.detach()
            if round_ == self.outer_loop - 1:
                break
            images = self.images.detach()
            for _ in range(self.inner_loop):
                train_epoch(model, images, self.labels, model_optimizer, cfg.batch_train, self.augment, self.generator)
        return total / (len(self.pools) * self.outer_loop)

