"""The model zoo of the trajectory-matching papers behind one registry.

``create_model("ConvNetD4", channels, num_classes, (H, W), seed=0)`` builds a model; every model maps
[B, C, H, W] to logits [B, num_classes] through ``embed(x)`` -> features [B, D] and a final linear
head (``dd.models.features``). Importing this package registers all models.
"""

from dd.models import convnet, resnet, small, vgg, vit  # noqa: F401  (importing registers the models)
from dd.models.features import backbone_state, embed_dim, head_name, load_backbone
from dd.models.registry import create_model, list_models, register_model

__all__ = ["backbone_state", "create_model", "embed_dim", "head_name", "list_models", "load_backbone",
           "register_model"]
