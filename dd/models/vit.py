"""A small vision transformer (Dosovitskiy et al., ICLR 2021) for the cross-architecture pool.

Non-overlapping ``patch x patch`` patches are embedded by one strided conv, a learned class token and
position embeddings are added, then ``depth`` pre-norm blocks ``x + MSA(LN(x))``, ``x + MLP(LN(x))``
(GELU), a final LayerNorm and a linear head on the class token. Attention is written out as
``softmax(q kᵀ / sqrt(d)) v`` rather than a fused kernel, so it runs under ``torch.func`` (vmap,
``functional_call``) and supports the second-order gradients of the distillation inner loop on every
device. No dropout and no buffers: seeds batch under ``dd.multiseed``.

Sizes: ``ViT`` cuts 4-px patches (an 8x8 grid at 32 px), ``ViTP2`` 2-px patches for 8-16 px images
(a 4x4 grid at 8 px), ``ViTP8`` and ``ViTP16`` for 64 and 128 px.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from dd.errors import DDError
from dd.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, D]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a GELU MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Input [B, channels, H, W] -> logits [B, num_classes]; H and W must be multiples of ``patch``."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], patch: int = 4, depth: int = 4,
                 width: int = 128, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        h, w = im_size
        if patch < 1 or h % patch or w % patch:
            raise DDError(f"ViT with {patch}-px patches needs an image size divisible by {patch}, got {h}x{w}; "
                          "pick a patch that divides it (ViTP2 at 8 px, ViT at 32 px, ViTP8 at 64 px, ViTP16 at "
                          "128 px, or patch=... as an override)")
        if depth < 1 or heads < 1 or width % heads:
            raise DDError(f"ViT needs depth >= 1 and a width divisible by the heads, got depth {depth}, width "
                          f"{width}, heads {heads}")
        self.patch_embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (h // patch) * (w // patch), width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features [B, width]: the class token after the last block and LayerNorm."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


for _name, _patch in {"ViT": 4, "ViTP2": 2, "ViTP8": 8, "ViTP16": 16}.items():
    register_model(_name)(functools.partial(ViT, patch=_patch))
