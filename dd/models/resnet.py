"""ResNet-18 in the CIFAR layout used by the DC/MTT code: BasicBlock [2, 2, 2, 2], 3x3 stem at stride 1,
widths 64-128-256-512, instance norm (GroupNorm(C, C)) by default or BatchNorm for the *BN names.

``ResNet18`` ends with a global average pool, which equals the reference ``avg_pool2d(out, 4)`` at 32 px
and works at any size. The ``_AP`` variants downsample with a stride-1 conv followed by AvgPool2d(2)
instead of a stride-2 conv and, as in the reference, classify the un-pooled final feature map with
``Linear(512*h*w)``; h, w are computed from the input size, so they work from 8 px upwards.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from dd.errors import DDError
from dd.models.layers import channel_norm, conv_out
from dd.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; downsampling by a strided conv or by conv + AvgPool2d(2)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, avgpool: bool) -> None:
        super().__init__()
        conv_stride = 1 if avgpool else stride
        pool = avgpool and stride != 1
        self.conv1 = nn.Conv2d(cin, cout, 3, conv_stride, 1, bias=False)
        self.norm1 = channel_norm(norm, cout)
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = channel_norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            layers = [nn.Conv2d(cin, cout, 1, conv_stride, bias=False), *([nn.AvgPool2d(2)] if pool else [])]
            self.shortcut = nn.Sequential(*layers, channel_norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Input [B, channels, H, W] -> logits [B, num_classes]."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int],
                 blocks: tuple[int, ...] = (2, 2, 2, 2), norm: str = "instancenorm", avgpool: bool = False) -> None:
        super().__init__()
        self.avgpool = avgpool
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), channel_norm(norm, 64), nn.ReLU())
        stages: list[nn.Module] = []
        cin, (h, w) = 64, im_size
        for i, n in enumerate(blocks):
            cout, stride = 64 * 2**i, 1 if i == 0 else 2
            stages.extend(BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, norm, avgpool)
                          for j in range(n))
            if stride == 2:
                h, w = (h // 2, w // 2) if avgpool else (conv_out(h, 3, 1, 2), conv_out(w, 3, 1, 2))
            cin = cout
        if h < 1 or w < 1:
            raise DDError(f"ResNet with avgpool downsampling needs inputs of at least 8 px, got {tuple(im_size)}")
        channel_norm(norm, cin, h, w)  # refuses instance norm on a final 1x1 map
        self.layers = nn.Sequential(*stages)
        self.classifier = nn.Linear(cin * h * w if avgpool else cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, D] fed to the classifier (globally pooled unless ``avgpool``)."""
        out = self.layers(self.stem(x))
        if not self.avgpool:
            out = F.adaptive_avg_pool2d(out, 1)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


for _name, _settings in {
    "ResNet18": {},
    "ResNet18BN": {"norm": "batchnorm"},
    "ResNet18_AP": {"avgpool": True},
    "ResNet18BN_AP": {"norm": "batchnorm", "avgpool": True},
}.items():
    register_model(_name)(functools.partial(ResNet, **_settings))
