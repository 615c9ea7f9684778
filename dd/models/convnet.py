"""ConvNet, the DC/DSA/MTT benchmark network, and its named variants (depth, width, act, norm, pooling).

The names are those of the DC code's ``get_network``; ``ConvNetASwish``/``ConvNetASwishBN`` (swish activation)
are from its BatchNorm pool for DM (``dd.eval.pools``).

Blocks ``[Conv3x3(width) -> norm -> act -> pool 2x2] x depth`` then ``Linear(width*h*w, classes)``.
With ``widths`` each block has its own width: KRR-ST's pool and test models (Lee et al. 2024, models/
convnet.py: ``convnet_128_256_512_bn`` at 32 px, ``convnet_64_128_256_512_bn`` at 64 px,
``convnet_32_64_128_256_512_bn`` at 224 px) are BatchNorm ConvNets widening block by block.
As in the reference, the first conv pads by 3 on one-channel inputs (28-px MNIST becomes 32 px).
Feature sizes follow the real arithmetic, so any input size works; a pool that would shrink a spatial
dimension below 1 is left out (e.g. ConvNetD8 at 32 px pools five times).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from dd.errors import DDError
from dd.models.layers import POOLS, check_choice, conv_out, make_act, make_norm
from dd.models.registry import register_model


class ConvNet(nn.Module):
    """Input [B, channels, H, W] -> logits [B, num_classes].

    ``depth`` blocks of ``width`` channels each, or, given ``widths``, one block per entry of that width
    (``widths`` then replaces ``width`` and ``depth``).
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], width: int = 128, depth: int = 3,
                 norm: str = "instancenorm", act: str = "relu", pooling: str = "avgpooling",
                 widths: Sequence[int] | None = None) -> None:
        super().__init__()
        check_choice("pooling", pooling, POOLS)
        blocks = tuple(widths) if widths is not None else (width,) * depth
        if not blocks or min(blocks) < 1:
            raise DDError(f"ConvNet needs at least one block of positive width, got widths {blocks}")
        layers: list[nn.Module] = []
        c, (h, w) = channels, im_size
        for d, block_width in enumerate(blocks):
            pad = 3 if channels == 1 and d == 0 else 1
            layers.append(nn.Conv2d(c, block_width, 3, padding=pad))
            c, h, w = block_width, conv_out(h, 3, pad), conv_out(w, 3, pad)
            norm_layer = make_norm(norm, c, h, w)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(make_act(act))
            if pooling != "none" and h >= 2 and w >= 2:
                layers.append(nn.AvgPool2d(2) if pooling == "avgpooling" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, D] fed to the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


VARIANTS: dict[str, dict] = {
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in range(1, 9)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256, 512, 1024)},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetASwish": {"act": "swish"},
    "ConvNetASwishBN": {"act": "swish", "norm": "batchnorm"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pooling": "none"},
    "ConvNetMP": {"pooling": "maxpooling"},
    "ConvNetAP": {"pooling": "avgpooling"},
    "ConvNetD4BN": {"depth": 4, "norm": "batchnorm"},
    "ConvNetKIP": {"width": 1024, "norm": "none"},
    # KRR-ST (Lee et al., ICLR 2024): widening BatchNorm ConvNets (db-Lee/selfsup_dd at 4beb4b1, models/convnet.py)
    "ConvNetBNWide": {"widths": (128, 256, 512), "norm": "batchnorm"},
    "ConvNetD4BNWide": {"widths": (64, 128, 256, 512), "norm": "batchnorm"},
    "ConvNetD5BNWide": {"widths": (32, 64, 128, 256, 512), "norm": "batchnorm"},
}

for _name, _settings in VARIANTS.items():
    register_model(_name)(functools.partial(ConvNet, **_settings))
