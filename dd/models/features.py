"""Models as feature extractors: every registered model is ``model.embed(x)`` -> [B, D] followed by one
final ``nn.Linear`` head (the last ``nn.Linear`` it registers). SSL teachers, KRR-ST and transfer
evaluation use the two parts separately: the head is dropped, replaced or ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from dd.errors import DDError


def head_name(model: nn.Module) -> str:
    """Qualified name of the model's head, its last ``nn.Linear`` (e.g. ``classifier``)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names or not hasattr(model, "embed"):
        raise DDError(f"{type(model).__name__} has no embed() and linear head; it cannot be used as a feature "
                      "extractor")
    return names[-1]


def embed_dim(model: nn.Module) -> int:
    """Length D of the features ``model.embed(x)``."""
    return model.get_submodule(head_name(model)).in_features


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the head's entries: what transfers between models with different heads."""
    prefix = head_name(model) + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``backbone_state`` output into ``model`` (of the same architecture); its head is left as it is."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head_name(model) + ".")]
    if missing or unexpected:
        raise DDError(f"backbone weights do not fit {type(model).__name__} (missing {missing[:3]}, unexpected "
                      f"{unexpected[:3]}); use the architecture they were trained with")
    return model
