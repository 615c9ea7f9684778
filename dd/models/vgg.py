"""VGG-11 as in the DC/MTT code: 3x3 convs, each followed by a norm (instance norm = GroupNorm(C, C),
or BatchNorm for VGG11BN) and ReLU, with 2x2 max-pools, then ``Linear(512*h*w)``.

As in the reference, the first conv pads by 3 on one-channel inputs (28-px MNIST becomes 32 px). A
max-pool that would shrink a spatial dimension below 1 is left out, so small inputs (8 px) work.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from dd.models.layers import channel_norm, conv_out
from dd.models.registry import register_model

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """Input [B, channels, H, W] -> logits [B, num_classes]; ``cfg`` lists conv widths and 'M' (max-pool)."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int],
                 cfg: tuple[int | str, ...] = VGG11, norm: str = "instancenorm") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for i, item in enumerate(cfg):
            if item == "M":
                if h >= 2 and w >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            pad = 3 if channels == 1 and i == 0 else 1
            h, w = conv_out(h, 3, pad), conv_out(w, 3, pad)
            layers += [nn.Conv2d(c, int(item), 3, padding=pad), channel_norm(norm, int(item), h, w), nn.ReLU()]
            c = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, D] fed to the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


register_model("VGG11")(functools.partial(VGG, cfg=VGG11))
register_model("VGG11BN")(functools.partial(VGG, cfg=VGG11, norm="batchnorm"))
