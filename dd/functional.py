"""The flat-parameter view of a model: the student of the inner loop is a function of one vector.

The vector concatenates the parameters in ``model.named_parameters()`` order, each flattened
row-major; ``ParamSpec`` records that order and the shapes, and the trajectory store relies on it.
Buffers (BatchNorm running statistics) are not part of the vector: they stay in the module.
The spec of each model is cached (weakly) on first use, so a model must not gain or lose
parameters after it has been run functionally.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from dd.errors import DDError


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of a model's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        """Length P of the flat vector."""
        return sum(math.prod(shape) for shape in self.shapes)

    def to_json(self) -> dict:
        """``{"names": [...], "shapes": [[...], ...]}``."""
        return {"names": list(self.names), "shapes": [list(shape) for shape in self.shapes]}

    @classmethod
    def from_json(cls, d: dict) -> ParamSpec:
        """Inverse of ``to_json``."""
        return cls(tuple(d["names"]), tuple(tuple(int(s) for s in shape) for shape in d["shapes"]))


_SPECS: weakref.WeakKeyDictionary[nn.Module, ParamSpec] = weakref.WeakKeyDictionary()


def param_spec(model: nn.Module) -> ParamSpec:
    """The ParamSpec of ``model``."""
    named = list(model.named_parameters())
    return ParamSpec(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))


def _cached_spec(model: nn.Module) -> ParamSpec:
    spec = _SPECS.get(model)
    if spec is None:
        spec = _SPECS[model] = param_spec(model)
    return spec


def flatten_params(model: nn.Module) -> torch.Tensor:
    """The parameters as a new 1-D tensor [P] (a detached copy; never shares memory with the model)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(flat: torch.Tensor, spec: ParamSpec) -> dict[str, torch.Tensor]:
    """Name -> view of ``flat`` [P] with the parameter's shape; differentiable w.r.t. ``flat``."""
    if flat.dim() != 1 or flat.numel() != spec.numel:
        raise DDError(f"flat parameters of shape {tuple(flat.shape)} do not fit a model with {spec.numel} "
                      "parameters; were they recorded with another model or dataset?")
    chunks = flat.split([math.prod(shape) for shape in spec.shapes])
    return {name: chunk.view(shape) for name, chunk, shape in zip(spec.names, chunks, spec.shapes, strict=True)}


def load_flat_(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy ``flat`` [P] into the model's parameters in place, without recording gradients."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in unflatten(flat, _cached_spec(model)).items():
            params[name].copy_(value)


def functional_forward(model: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with the parameters taken from ``flat`` [P] and the buffers from the module.

    Differentiable w.r.t. ``flat`` and ``x``, to any order (``create_graph=True`` works). In train mode
    BatchNorm updates the module's running statistics, exactly as ``model(x)`` does.
    """
    params = unflatten(flat, _cached_spec(model))
    return functional_call(model, {**params, **dict(model.named_buffers())}, (x,))


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (whose statistics span the minibatch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def stack_functional_forward(model: nn.Module, flats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits [S, B, K] of S parameter vectors ``flats`` [S, P], each on its own batch ``x`` [S, B, C, H, W].

    Batched with ``torch.func.vmap``. BatchNorm in train mode updates shared running statistics, which
    cannot be batched: it raises DDError, and callers loop over ``functional_forward`` instead.
    """
    if model.training and has_batchnorm(model):
        raise DDError("stack_functional_forward cannot batch BatchNorm in train mode; "
                      "call model.eval() or loop over functional_forward")
    return vmap(lambda f, xb: functional_forward(model, f, xb))(flats, x)
