"""DATM: Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory Matching
(Guo, Wang, Chen, Zhang, You; ICLR 2024, arXiv 2310.05773).

DATM matches FTD's (GSAM) experts with MTT's loss and outer optimisers, and changes four things. Top-down,
an iteration (``dd.distill.reference.datm_iteration``) is

    t ~ U[min_start_epoch, upper(it)),  w_0 = w*_t,  w_{k+1} = w_k - lr * grad_w CE_soft(f(DSA(x_B); w_k), y_B)
    L = ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2
    unless L > threshold: x, lr <- SGD(momentum 0.5),  y <- SGD(lr_y, momentum 0.9), all through the unroll

and the four changes are:

1. difficulty alignment: the start epoch t is drawn from [min_start_epoch, upper), where under
   sequential generation (``current_max_start_epoch`` set) the upper bound grows linearly from
   current_max_start_epoch to max_start_epoch over the first ``expansion_end`` iterations;
2. initialisation ``--pix-init correct``: per class, random real images that a final-epoch expert
   classifies correctly;
3. learnable soft labels (``--soft-labels``): logits initialised to the mean logits of the experts
   that classify the image correctly (``--soft-label-init first_expert``: the first expert's raw
   logits, what DATM.py l.309-319 does for ``pix_init: real``), trained with SGD(lr_y, momentum 0.9)
   through the unroll and used with the soft cross-entropy in the inner loop and at evaluation
   (``dd.training``);
4. the threshold skip: no outer step (images, lr, labels) when the matching loss exceeds ``threshold``.

Unlike the reference code: a class that no expert can fill is topped up with random real images and
a warning (the reference crashes), an image that no expert classifies correctly gets the mean logits
of all experts (the reference divides by zero), and any number of experts works (the reference
assumes ten per file and at least ten files).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch

from dd.distill.config import DATMConfig
from dd.distill.context import Context
from dd.distill.engine import Distiller
from dd.distill.expert_labels import complete_experts, expert_logits
from dd.distill.init import class_pools, register_init
from dd.distill.methods.base import Method
from dd.distill.registry import register_method


# -- 1. difficulty alignment -------------------------------------------------------------------------
def window_upper(iteration: int, max_start_epoch: int, current_max_start_epoch: int | None = None,
                 expansion_end: int = 3000) -> int:
    """Exclusive upper bound of the start epoch at 0-based ``iteration``: with sequential generation,
    min(T + floor((T+ - T) * it / expansion_end), T+) for T = current_max_start_epoch and
    T+ = max_start_epoch; without it (T is None), T+."""
    if current_max_start_epoch is None:
        return max_start_epoch
    grown = current_max_start_epoch + (max_start_epoch - current_max_start_epoch) * iteration // expansion_end
    return min(grown, max_start_epoch)


# -- 2. initialisation from correctly classified real images -----------------------------------------
def select_correct(order: torch.Tensor, correct: Iterable[torch.Tensor], ipc: int) -> tuple[torch.Tensor, bool]:
    """The first ``ipc`` entries of ``order`` [n] that expert 0 classifies correctly, topped up in order
    with those of expert 1, 2, ... (``correct`` yields, lazily, one bool mask [n] aligned with ``order``
    per expert). If the experts leave it short, the remaining entries of ``order`` fill it. Returns
    (picks [ipc], whether that fallback was needed)."""
    taken = torch.zeros(len(order), dtype=torch.bool)
    picks: list[int] = []
    for mask in correct:
        for i in (mask & ~taken).nonzero().flatten()[: ipc - len(picks)].tolist():
            taken[i] = True
            picks.append(i)
        if len(picks) == ipc:
            return order[picks], False
    picks += (~taken).nonzero().flatten()[: ipc - len(picks)].tolist()
    return order[picks], True


@register_init("correct")
def correct_init(ctx: Context, generator: torch.Generator) -> torch.Tensor:
    """Per class, a random permutation of its real images (from ``generator``) scanned for images that the
    first complete expert (final epoch) classifies correctly, then the next expert's, until ``ipc`` are
    found; a class the experts cannot fill is topped up with random real images, with a warning."""
    images = ctx.data.train_images
    experts = complete_experts(ctx)
    predictions: dict[int, torch.Tensor] = {}

    def predicted(expert: int) -> torch.Tensor:
        if expert not in predictions:
            predictions[expert] = expert_logits(ctx, images, expert).argmax(1).cpu()
        return predictions[expert]

    def masks(order: torch.Tensor, label: int) -> Iterator[torch.Tensor]:
        for expert in experts:
            yield predicted(expert)[order] == label

    picks, short_classes = [], []
    for c, idx in enumerate(class_pools(ctx)):
        order = idx[torch.randperm(len(idx), generator=generator)]
        chosen, short = select_correct(order, masks(order, c), ctx.config.ipc)
        picks.append(chosen)
        if short:
            short_classes.append(str(c))
    if short_classes:
        warnings.warn(f"the {len(experts)} experts classify fewer than {ctx.config.ipc} images of class(es) "
                      f"{', '.join(short_classes)} correctly; topped up with random real images", stacklevel=2)
    return images[torch.cat(picks).to(images.device)].clone()


# -- 3. soft labels ----------------------------------------------------------------------------------
def masked_mean_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Soft labels [N, K] from expert logits [E, N, K]: per image, the mean logits over the experts whose
    argmax is its class ``classes`` [N]; over all E experts where none is correct."""
    correct = (logits.argmax(dim=2) == classes).to(logits.dtype)  # [E, N]
    count = correct.sum(dim=0)  # [N]
    weights = torch.where(count > 0, correct / count.clamp(min=1), torch.full_like(correct, 1 / len(logits)))
    return (weights.unsqueeze(2) * logits).sum(dim=0)


@register_method("datm", config=DATMConfig, run=Distiller)
class DATM(Method):
    """MTT with a growing start-epoch window, soft labels and the threshold skip."""

    protocol = "datm"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.skipped = 0

    def start_epoch(self, iteration: int, generator: torch.Generator) -> int:
        """t uniform in [min_start_epoch, window_upper(iteration))."""
        cfg = self.ctx.config
        upper = window_upper(iteration, cfg.max_start_epoch, cfg.current_max_start_epoch, cfg.expansion_end)
        return int(torch.randint(cfg.min_start_epoch, upper, (1,), generator=generator))

    def init_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Class ids [N], or with ``soft_labels`` logits [N, K]: the masked mean over all complete experts
        (``soft_label_init: correct_mean``) or the first complete expert's own (``first_expert``)."""
        classes = super().init_labels(images)
        cfg = self.ctx.config
        if not cfg.soft_labels:
            return classes
        experts = complete_experts(self.ctx)
        if cfg.soft_label_init == "first_expert":
            return expert_logits(self.ctx, images, experts[0])
        logits = torch.stack([expert_logits(self.ctx, images, e) for e in experts])
        return masked_mean_logits(logits, classes)

    def learn_labels(self) -> bool:
        """Soft labels are learned unless ``lr_y`` is 0."""
        cfg = self.ctx.config
        return cfg.soft_labels and cfg.lr_y > 0

    def accept_update(self, loss: torch.Tensor) -> bool:
        """False (and one more skip counted) when ``threshold`` is set and the loss exceeds it."""
        threshold = self.ctx.config.threshold
        if threshold is not None and loss.item() > threshold:
            self.skipped += 1
            return False
        return True

    def metrics(self) -> dict[str, float]:
        """The number of skipped updates so far."""
        return {"skipped": self.skipped}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"skipped": torch.tensor([self.skipped])}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.skipped = int(tensors["skipped"][0])
