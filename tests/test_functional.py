"""The flat-parameter view: order and round trips of the vector, copies not aliases, and a functional
forward that equals the module's forward, gradient and second derivatives for every registered model."""

import json

import pytest
import torch
from torch import nn

from dd.errors import DDError
from dd.functional import (
    ParamSpec,
    flatten_params,
    functional_forward,
    load_flat_,
    param_spec,
    stack_functional_forward,
    unflatten,
)
from dd.models import create_model, list_models
from tests.helpers import INDIVISIBLE, ONE_BY_ONE


def small_convnet(**kw) -> nn.Module:
    return create_model("ConvNet", 1, 3, (8, 8), seed=0, width=4, **kw)


def test_spec_follows_named_parameters_and_round_trips_through_json():
    model = small_convnet(norm="batchnorm")
    spec = param_spec(model)
    assert spec.names == tuple(n for n, _ in model.named_parameters())
    assert spec.shapes == tuple(tuple(p.shape) for _, p in model.named_parameters())
    assert spec.numel == sum(p.numel() for p in model.parameters())
    assert ParamSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_flat_vector_concatenates_parameters_in_order():
    model = small_convnet()
    flat = flatten_params(model)
    expected = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    assert torch.equal(flat, expected)
    parts = unflatten(flat, param_spec(model))
    assert list(parts) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert torch.equal(parts[name], p)


def test_unflatten_gives_differentiable_views():
    model = small_convnet()
    flat = flatten_params(model).requires_grad_(True)
    parts = unflatten(flat, param_spec(model))
    first = next(iter(parts.values()))
    assert first.data_ptr() == flat.data_ptr()
    (grad,) = torch.autograd.grad(sum(v.sum() for v in parts.values()), flat)
    assert torch.equal(grad, torch.ones_like(flat))


def test_flatten_params_is_a_copy():
    model = small_convnet()
    flat = flatten_params(model)
    before = flat.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(flat, before)
    flat.zero_()
    assert all(p.abs().sum() > 0 for p in model.parameters())


def test_load_flat_round_trip():
    source, target = small_convnet(), create_model("ConvNet", 1, 3, (8, 8), seed=1, width=4)
    x = torch.randn(5, 1, 8, 8)
    assert not torch.allclose(source(x), target(x))
    load_flat_(target, flatten_params(source))
    assert torch.equal(flatten_params(target), flatten_params(source))
    assert torch.equal(source(x), target(x))


def test_wrong_length_is_a_dderror():
    model = small_convnet()
    with pytest.raises(DDError, match="another model"):
        load_flat_(model, torch.zeros(param_spec(model).numel + 1))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", [n for n in list_models()
                                  if n not in ONE_BY_ONE[(1, (8, 8))] | INDIVISIBLE[(1, (8, 8))]])
def test_functional_forward_equals_module_forward(name, train):
    """The weights come from ``flat`` (another seed's model), not from the module that runs them."""
    model = create_model(name, 1, 4, (8, 8), seed=0).train(train)
    other = create_model(name, 1, 4, (8, 8), seed=1).train(train)
    x = torch.randn(3, 1, 8, 8)
    out = functional_forward(model, flatten_params(other), x)
    assert torch.allclose(out, other(x), atol=1e-5)
    assert not torch.allclose(out, model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN", "ConvNetLN", "ConvNetMP", "ResNet18_AP", "AlexNet"])
def test_gradient_wrt_flat_matches_module_backward(name):
    size = 16 if name.startswith("ResNet") else 8  # ResNet18_AP reaches 1x1 (refused) at 8 px
    model = create_model(name, 3, 4, (size, size), seed=0, **({"width": 8} if name.startswith("ConvNet") else {}))
    x, y = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    module_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    flat = flatten_params(model).requires_grad_(True)
    (flat_grad,) = torch.autograd.grad(nn.functional.cross_entropy(functional_forward(model, flat, x), y), flat)
    assert torch.allclose(flat_grad, module_grad, atol=1e-6)


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_second_derivatives_through_functional_forward(norm):
    """create_graph=True gradients are themselves differentiable w.r.t. flat and x (gradgradcheck, float64)."""
    model = create_model("ConvNet", 1, 3, (4, 4), seed=0, width=2, depth=1, norm=norm).double()
    flat = flatten_params(model).requires_grad_(True)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda f, xx: functional_forward(model, f, xx), (flat, x))


def test_functional_forward_leaves_module_parameters_alone():
    model = small_convnet()
    before = flatten_params(model)
    functional_forward(model, torch.zeros_like(before), torch.randn(2, 1, 8, 8))
    assert torch.equal(flatten_params(model), before)


@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN"])
def test_stack_functional_forward_equals_a_loop(name):
    model = create_model(name, 1, 3, (8, 8), seed=0, width=4).eval()
    flats = torch.stack([flatten_params(create_model(name, 1, 3, (8, 8), seed=s, width=4)) for s in range(3)])
    x = torch.randn(3, 5, 1, 8, 8)
    loop = torch.stack([functional_forward(model, f, xb) for f, xb in zip(flats, x, strict=True)])
    assert torch.allclose(stack_functional_forward(model, flats, x), loop, atol=1e-6)


def test_stack_functional_forward_refuses_batchnorm_in_train_mode():
    model = create_model("ConvNetBN", 1, 3, (8, 8), seed=0, width=4).train()
    with pytest.raises(DDError, match="BatchNorm"):
        stack_functional_forward(model, flatten_params(model)[None], torch.randn(1, 2, 1, 8, 8))
