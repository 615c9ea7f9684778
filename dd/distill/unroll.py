"""The student's inner loop and the ways to differentiate through it.

An iteration first draws an ``InnerPlan`` (which synthetic images each step uses and the DSA seed of
each step), so any unroll can replay a step exactly. ``full_unroll`` keeps every step's graph, as in
the MTT code; the unroll is a registry entry so a constant-memory variant can take its place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """The student's inner optimiser as a function of flat parameters. Its state is a tuple whose first
    entry is the parameters; plain SGD keeps nothing else: w' = w - lr * grad_w loss(f(DSA(x_B); w), y_B).
    Methods with other inner optimisers (AST's heavy-ball momentum) subclass it."""

    def __init__(self, model: nn.Module, augment: DSA,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = classification_loss) -> None:
        self.model = model
        self.augment = augment
        self.loss_fn = loss_fn

    def init_state(self, w0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The inner optimiser's state at the start parameters."""
        return (w0,)

    def gradient(self, w: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                 seed: int, create_graph: bool = True) -> torch.Tensor:
        """grad_w of the inner loss on minibatch ``index`` augmented with ``seed``."""
        index = index.to(images.device)
        x = self.augment(images[index], make_generator(seed))
        loss = self.loss_fn(functional_forward(self.model, w, x), labels[index])
        (grad,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        return grad

    def step(self, state: tuple[torch.Tensor, ...], images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
             index: torch.Tensor, seed: int, create_graph: bool = True) -> tuple[torch.Tensor, ...]:
        """The state after one inner step."""
        w = state[0]
        return (w - lr * self.gradient(w, images, labels, index, seed, create_graph),)


def full_unroll(student: Student, w0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                lr: torch.Tensor, plan: InnerPlan, capture: Sequence[int]) -> list[torch.Tensor]:
    """Student parameters after each step count in ``capture`` (e.g. ``[N]`` for the end point),
    differentiable w.r.t. images, labels and lr through every step (memory grows linearly with N)."""
    state = student.init_state(w0.detach().requires_grad_(True))
    captured = []
    for step, (index, seed) in enumerate(zip(plan.indices, plan.seeds, strict=True), start=1):
        state = student.step(state, images, labels, lr, index, seed)
        if step in capture:
            captured.append(state[0])
    return captured


Unroll = Callable[[Student, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, InnerPlan, Sequence[int]],
                  list[torch.Tensor]]
UNROLLS: dict[str, Unroll] = {"full": full_unroll}
