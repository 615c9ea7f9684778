"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Each iteration draws a freshly initialised network psi (never trained) and, per class c, a real batch; with
one siamese DSA draw A_c per class (``dd.distill.condense.siamese``),

    L = sum_c || mean_i psi.embed(A_c(real_c))_i - mean_j psi.embed(A_c(S_c))_j ||^2

(``embed``: the features before the classifier; the real side is a constant), then one SGD step of the images.
A network with BatchNorm embeds all classes in one batch (train-mode batch statistics over every class, as
the reference); other networks one class at a time (the same value, less memory). No experts: it runs without
a buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dd.config import opt
from dd.distill.condense import CondenseConfig, Condenser, siamese
from dd.distill.registry import register_method
from dd.functional import has_batchnorm


@dataclass
class DMConfig(CondenseConfig):
    """DM: the per-class settings with DM's defaults."""

    iterations: int = opt(20000, "outer iterations (a fresh network each)", bounds="positive")
    lr_img: float = opt(1.0, "learning rate of the synthetic images (SGD, momentum 0.5)", bounds="positive")
    pix_init: str = opt("real", "initial images: Gaussian noise or random real images of the class",
                        choices=("noise", "real"))
    eval_every: int = opt(2000, "evaluate every k iterations (0: only at the end)", bounds="nonnegative")


def class_mean_embeddings(model: nn.Module, batches: Sequence[torch.Tensor], together: bool) -> torch.Tensor:
    """[K, D]: the mean of ``model.embed`` over each batch; ``together`` embeds the concatenation in one pass."""
    if together:
        features = model.embed(torch.cat(list(batches))).split([b.shape[0] for b in batches])
        return torch.stack([f.mean(0) for f in features])
    return torch.stack([model.embed(b).mean(0) for b in batches])


def mean_embedding_loss(model: nn.Module, real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor],
                        together: bool) -> torch.Tensor:
    """sum_c ||mean embed(real_c) - mean embed(syn_c)||^2, differentiable with respect to ``syn`` only."""
    with torch.no_grad():
        target = class_mean_embeddings(model, real, together)
    return ((target - class_mean_embeddings(model, syn, together)) ** 2).sum()


@register_method("dm", config=DMConfig)
class DM(Condenser):
    """One DM run (module docstring)."""

    def step(self) -> torch.Tensor:
        """One iteration on a fresh network; returns the loss divided by the number of classes."""
        model = self.fresh_network()
        real, syn = [], []
        for c in range(len(self.pools)):
            pair = [self.real_batch(c, self.config.batch_real), self.synthetic(c)]
            r, s = siamese(self.dsa, pair, self.generator)
            real.append(r)
            syn.append(s)
        loss = mean_embedding_loss(model, real, syn, together=has_batchnorm(model))
        self.outer_step(loss)
        return loss.detach() / len(self.pools)

