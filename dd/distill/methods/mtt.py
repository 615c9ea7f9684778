"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

A student starts from expert parameters at a random epoch t, takes N differentiable SGD steps on
the synthetic set with a learnable lr, and the synthetic images are updated to bring its end point
close to the expert at epoch t+M, the distance normalised by how far the expert itself moved. Every
piece is the engine's default, so the method is the base class itself.
"""

from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller
from dd.distill.methods.base import Method
from dd.distill.registry import register_method


@register_method("mtt", config=MTTConfig, run=Distiller)
class MTT(Method):
    """Matching Training Trajectories: the engine's defaults."""
