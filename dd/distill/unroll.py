"""The student's inner loop and the ways to differentiate through it.

An iteration first draws an ``InnerPlan`` (which synthetic images each step uses and the DSA seed of
each step), so any unroll can replay a step exactly. ``full_unroll`` keeps every step's graph, as in
the MTT code; the unroll is a registry entry so a constant-memory variant can take its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dd.augment import DSA
from dd.device import make_generator
from dd.functional import functional_forward
from dd.training import classification_loss


@dataclass
class InnerPlan:
    """Per inner step: the synthetic indices of its minibatch (CPU) and the seed of its augmentation."""

    indices: list[torch.Tensor]
    seeds: list[int]


def make_plan(num_images: int, batch_size: int, steps: int, generator: torch.Generator) -> InnerPlan:
    """Minibatches are consecutive chunks of fresh random permutations of the synthetic set (MTT)."""
    chunks: list[torch.Tensor] = []
    while len(chunks) < steps:
        chunks.extend(torch.randperm(num_images, generator=generator).split(batch_size))
    seeds = torch.randint(0, 2**62, (steps,), generator=generator).tolist()
    return InnerPlan(chunks[:steps], seeds)


class Student:
    """One inner SGD step of the student, w' = w - lr * grad_w loss(f(DSA(x_B); w), y_B)."""

    def __init__(self, model: nn.Module, augment: DSA,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = classification_loss) -> None:
        self.model = model
        self.augment = augment
        self.loss_fn = loss_fn

    def step(self, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
             index: torch.Tensor, seed: int, create_graph: bool = True) -> torch.Tensor:
        """The parameters after one step on minibatch ``index`` augmented with ``seed``."""
        index = index.to(images.device)
        x = self.augment(images[index], make_generator(seed))
        loss = self.loss_fn(functional_forward(self.model, w, x), labels[index])
        (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        return w - lr * grad


def full_unroll(student: Student, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                lr: torch.Tensor, plan: InnerPlan) -> torch.Tensor:
    """Final student parameters w_N, differentiable w.r.t. images, labels and lr through every step
    (memory grows linearly with the number of steps)."""
    w = w0.detach().requires_grad_(True)
    for index, seed in zip(plan.indices, plan.seeds, strict=True):
        w = student.step(w, images, labels, lr, index, seed)
    return w


Unroll = Callable[[Student, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, InnerPlan], torch.Tensor]
UNROLLS: dict[str, Unroll] = {"full": full_unroll}
