"""The hooks a trajectory-matching method can change; the defaults are MTT's.

A method is a small class over the shared engine (``dd.distill.engine``): how the synthetic set is
initialised, which expert window is matched at an iteration, the inner loss, the matching loss,
whether an update is applied, and what happens after it.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from dd.augment import DSA
from dd.distill.context import Context
from dd.distill.init import init_images
from dd.distill.unroll import Student
from dd.training import classification_loss


def normalized_distance(w_final: torch.Tensor, w_start: torch.Tensor, w_target: torch.Tensor) -> torch.Tensor:
    """MTT's loss ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2 (Cazenavette et al. 2022, eq. 2)."""
    return (w_final - w_target).pow(2).sum() / (w_start - w_target).pow(2).sum()


class Method:
    """MTT behaviour; subclasses override single hooks."""

    name = "base"
    protocol = "mtt"  # the evaluation protocol (dd.protocols) this method's sets are scored under
    unroll: str | None = None  # the unroll that --unroll auto gives this method (None: the one that fits memory)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def init_images(self, generator: torch.Generator) -> torch.Tensor:
        """[K*ipc, C, H, W] in model space, by ``--pix-init`` (see ``dd.distill.init``)."""
        return init_images(self.ctx.config.pix_init, self.ctx, generator)

    def init_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Class ids [K*ipc], ``ipc`` consecutive images per class (not learned in MTT)."""
        cfg, spec = self.ctx.config, self.ctx.data.spec
        return torch.arange(spec.num_classes, device=images.device).repeat_interleave(cfg.ipc)

    def learn_labels(self) -> bool:
        """Whether the labels are optimised (with SGD(lr_y, momentum 0.9)); only soft labels can be."""
        return False

    def start_epoch(self, iteration: int, generator: torch.Generator) -> int:
        """Start epoch t drawn uniformly from [min_start_epoch, max_start_epoch)."""
        cfg = self.ctx.config
        return int(torch.randint(cfg.min_start_epoch, cfg.max_start_epoch, (1,), generator=generator))

    def start_params(self, trajectory: torch.Tensor, start: int, generator: torch.Generator) -> torch.Tensor:
        """The student's start parameters: the expert at epoch t."""
        return trajectory[start]

    def make_student(self, model: nn.Module, augment: DSA, start: int) -> Student:
        """The inner optimiser of an iteration that starts at epoch t: plain SGD with the learnable lr on
        ``inner_loss`` at t."""
        return Student(model, augment, functools.partial(self.inner_loss, start=start))

    def inner_loss(self, logits: torch.Tensor, labels: torch.Tensor, start: int) -> torch.Tensor:
        """Cross-entropy on class ids, soft cross-entropy on logit labels; the same at every start epoch t."""
        return classification_loss(logits, labels)

    def capture_steps(self) -> list[int]:
        """Inner step counts whose parameters ``match_loss`` needs (the end point N)."""
        return [self.ctx.config.syn_steps]

    def match_loss(self, captured: list[torch.Tensor], w_start: torch.Tensor, trajectory: torch.Tensor,
                   start: int) -> torch.Tensor:
        """Normalised distance of the end point to the expert at epoch t+M."""
        target = trajectory[start + self.ctx.config.expert_epochs]
        return normalized_distance(captured[-1], w_start, target)

    def accept_update(self, loss: torch.Tensor) -> bool:
        """Whether the outer optimisers step on this iteration (always, in MTT)."""
        return True

    def after_update(self, images: torch.Tensor) -> None:
        """Called after every accepted outer step (FTD updates its EMA here)."""

    def extra_sets(self) -> dict[str, torch.Tensor]:
        """Further image sets to save and evaluate beside the optimised one (FTD's EMA), by name."""
        return {}

    def metrics(self) -> dict[str, float]:
        """Values to log with the loss every ``log_every`` iterations (DATM's count of skipped updates)."""
        return {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Method state that a checkpoint must hold to resume exactly."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""
