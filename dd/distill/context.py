"""What a method's hooks may read during a distillation run: its own module, below the engine and the
methods, so that both import it and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dd.buffer.store import TrajectoryStore
from dd.distill.config import MTTConfig
from dd.realdata import PreparedData


@dataclass
class Context:
    """The run's config, its prepared real data, the expert store, the student model and the device."""

    config: MTTConfig
    data: PreparedData
    store: TrajectoryStore
    model: nn.Module
    device: torch.device
