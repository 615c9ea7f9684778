"""Layers chosen by name and the spatial arithmetic that sizes the classifiers of the model zoo."""

from __future__ import annotations

from torch import nn

from dd.errors import DDError

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "sigmoid", "leakyrelu", "swish")
POOLS = ("avgpooling", "maxpooling", "none")


def check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise DDError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DDError(f"unknown {kind} '{value}'; choose from {', '.join(choices)}")


def channel_norm(norm: str, channels: int, height: int | None = None, width: int | None = None) -> nn.Module:
    """Per-channel normalisation; 'instancenorm' is GroupNorm(C, C, affine) as in the reference code. Given
    the feature map's size, instance norm of a 1x1 map is refused: it maps every input to the same output."""
    check_choice("norm", norm, ("instancenorm", "batchnorm"))
    if norm == "instancenorm" and height == 1 and width == 1:
        raise DDError("instance norm over a 1x1 feature map makes every output the same (the images are too small "
                      "for this depth); use the BatchNorm variant (e.g. ResNet18BN, VGG11BN, ConvNetBN) or a "
                      "shallower network")
    if norm == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    return nn.BatchNorm2d(channels)


def make_norm(norm: str, channels: int, height: int, width: int) -> nn.Module | None:
    """Normalisation of a [B, C, H, W] feature map by name (ConvNet choices); None for 'none'."""
    check_choice("norm", norm, NORMS)
    if norm == "none":
        return None
    if norm == "layernorm":
        return nn.LayerNorm([channels, height, width], elementwise_affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    return channel_norm(norm, channels, height, width)


def make_act(act: str) -> nn.Module:
    """Activation by name; 'leakyrelu' has slope 0.01, 'swish' is x * sigmoid(x) (SiLU)."""
    check_choice("act", act, ACTS)
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": lambda: nn.LeakyReLU(0.01), "swish": nn.SiLU}[act]()


def conv_out(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    """Output length of a convolution along one spatial dimension."""
    return (size + 2 * padding - kernel) // stride + 1
