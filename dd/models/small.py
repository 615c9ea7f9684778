"""The small baselines of the cross-architecture pool: AlexNet (and AlexNetBN), LeNet and an MLP (DC/MTT layouts).

Feature sizes follow the real arithmetic and pools that would shrink a spatial dimension below 1 are
left out, so 8-px inputs work. LeNet pads both 5x5 convs by 2 when the input is under 16 px (the
reference pads only the first conv, and only for one-channel inputs, which needs at least 16 px).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from dd.models.layers import conv_out
from dd.models.registry import register_model


class _ConvStack(nn.Module):
    """Conv/[BatchNorm]/ReLU/max-pool features sized by arithmetic, followed by an MLP head."""

    def __init__(self, channels: int, im_size: tuple[int, int], convs: list[tuple[int, int, int, bool]],
                 head: list[int], batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for cout, kernel, pad, pool in convs:
            norm = [nn.BatchNorm2d(cout)] if batchnorm else []
            layers += [nn.Conv2d(c, cout, kernel, padding=pad), *norm, nn.ReLU()]
            c, h, w = cout, conv_out(h, kernel, pad), conv_out(w, kernel, pad)
            if pool and h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        dims = [c * h * w, *head]
        fcs: list[nn.Module] = []
        for i in range(len(dims) - 1):
            fcs += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        self.classifier = nn.Sequential(*fcs[:-1])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, D] fed to the last linear layer (the hidden FC layers included)."""
        return self.classifier[:-1](self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[-1](self.embed(x))


def alexnet(channels: int, num_classes: int, im_size: tuple[int, int], batchnorm: bool = False) -> nn.Module:
    """Convs 5x5/128 (pad 4 on one channel, else 2), 5x5/192, 3x3/256, 3x3/192, 3x3/192; three max-pools;
    with ``batchnorm`` a BatchNorm after each conv (the DC code's AlexNetBN)."""
    convs = [(128, 5, 4 if channels == 1 else 2, True), (192, 5, 2, True),
             (256, 3, 1, False), (192, 3, 1, False), (192, 3, 1, True)]
    return _ConvStack(channels, im_size, convs, [num_classes], batchnorm)


register_model("AlexNet")(alexnet)
register_model("AlexNetBN")(functools.partial(alexnet, batchnorm=True))


@register_model("LeNet")
def lenet(channels: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """Convs 5x5/6 and 5x5/16 each with ReLU and max-pool, then FC 120-84-classes."""
    small = min(im_size) < 16
    convs = [(6, 5, 2 if channels == 1 or small else 0, True), (16, 5, 2 if small else 0, True)]
    return _ConvStack(channels, im_size, convs, [120, 84, num_classes])


@register_model("MLP")
def mlp(channels: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """Flatten, then FC 128-128-classes with ReLU."""
    return _ConvStack(channels, im_size, [], [128, 128, num_classes])
