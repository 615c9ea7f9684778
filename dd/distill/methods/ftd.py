"""FTD: Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation
(Du, Jiang, Tan, Zhou, Li; CVPR 2023, arXiv 2211.11004).

FTD changes MTT in two places. The experts are trained with GSAM, so their trajectories are flat
(a buffer recipe: ``dd.buffer``, presets ``experiments/buffer/<dataset>_gsam.yaml``). Distillation is
MTT's, plus an exponential moving average of the synthetic images,

    ema_0 = x_0,    ema_k = d * ema_{k-1} + (1 - d) * x_k    after every outer step k,

with no bias correction (as the authors' code). Top-down, an iteration is MTT's (``dd.distill.methods.mtt``)
followed by that EMA step (``dd.distill.reference.ftd_iteration``). The EMA never feeds back into the
optimisation; it is a second synthetic set that the engine saves as ``synset_ema/`` and evaluates as
``eval/ema/<model>``.

Unlike the reference code, the EMA set is evaluated on freshly initialised networks (the reference
reuses the network it has just trained on the raw set), and the EMA is part of the checkpoint, so a
resumed run continues it exactly.
"""

from __future__ import annotations

import torch

from dd.distill.config import FTDConfig
from dd.distill.context import Context
from dd.distill.engine import Distiller
from dd.distill.methods.base import Method
from dd.distill.registry import register_method


def ema_update_(ema: torch.Tensor, images: torch.Tensor, decay: float) -> None:
    """In place: ema <- decay * ema + (1 - decay) * images."""
    ema.mul_(decay).add_(images, alpha=1 - decay)


@register_method("ftd", config=FTDConfig, run=Distiller)
class FTD(Method):
    """MTT plus an EMA of the synthetic images (decay ``ema_decay``)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.ema: torch.Tensor | None = None

    def init_images(self, generator: torch.Generator) -> torch.Tensor:
        """MTT's initialisation; the EMA starts as a copy of it."""
        images = super().init_images(generator)
        self.ema = images.detach().clone()
        return images

    def after_update(self, images: torch.Tensor) -> None:
        """One EMA step towards the updated images."""
        ema_update_(self.ema, images, self.ctx.config.ema_decay)

    def extra_sets(self) -> dict[str, torch.Tensor]:
        """The EMA images, saved and evaluated as the set "ema"."""
        return {"ema": self.ema}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"ema": self.ema}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ema = tensors["ema"].clone()
