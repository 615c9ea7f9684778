"""Central finite differences for the unroll gradient tests (float64)."""

import torch


def assert_matches_finite_differences(loss_of, images: torch.Tensor, lr: torch.Tensor,
                                      indices=(0, 17, 40, 95), eps: float = 1e-6) -> None:
    """``loss_of(images, lr)``'s autograd gradient w.r.t. a few image entries and the lr equals
    central finite differences."""
    images = images.detach().clone().requires_grad_(True)
    lr = lr.detach().clone().requires_grad_(True)
    loss_of(images, lr).backward()
    x, rate = images.detach(), lr.detach()
    for flat_index in indices:
        bump = torch.zeros_like(x).view(-1)
        bump[flat_index] = eps
        bump = bump.view_as(x)
        numeric = (loss_of(x + bump, rate) - loss_of(x - bump, rate)) / (2 * eps)
        assert torch.allclose(images.grad.view(-1)[flat_index], numeric, rtol=1e-4, atol=1e-9), flat_index
    numeric_lr = (loss_of(x, rate + eps) - loss_of(x, rate - eps)) / (2 * eps)
    assert torch.allclose(lr.grad, numeric_lr, rtol=1e-4)
    assert images.grad.abs().sum() > 0
