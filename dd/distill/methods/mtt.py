"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

One outer iteration, top-down (``dd.distill.reference.mtt_iteration`` states it as code):

    w*      an expert trajectory, drawn uniformly; t ~ U[min_start_epoch, max_start_epoch)
    w_0     = w*_t
    w_{k+1} = w_k - lr * grad_w CE(f(DSA(x_{B_k}); w_k), y_{B_k}),   k = 0..N-1   (N = syn_steps, lr learned)
    L       = ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2                      (M = expert_epochs; eq. 2)
    x, lr   <- one SGD step (momentum 0.5) on dL/dx, dL/dlr, through all N inner steps

The minibatches B_k are consecutive chunks of fresh random permutations of the synthetic set. Every piece is
the engine's default, so the method is the base class itself.
"""

from dd.distill.config import MTTConfig
from dd.distill.engine import Distiller
from dd.distill.methods.base import Method
from dd.distill.registry import register_method


@register_method("mtt", config=MTTConfig, run=Distiller)
class MTT(Method):
    """Matching Training Trajectories: the engine's defaults."""
