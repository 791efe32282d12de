"""A small Vision Transformer (pre-norm, class token, learned position embeddings, no dropout).

Defaults follow the paper's CIFAR-10 ablation: patch 4, hidden 512, 6 layers, 8 heads, MLP width 512.
Features (p = hidden) are the final-LayerNorm'ed class token.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ncprop._validation import check_positive_int
from ncprop.models.base import NCModel, _check_image_shape


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (b, heads, t, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class ViT(NCModel):
    """ViT for images ``in_shape = (C, H, W)`` whose sides are multiples of ``patch_size``."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, *, patch_size: int = 4, hidden: int = 512,
                 depth: int = 6, heads: int = 8, mlp_dim: int = 512, bias: bool = True) -> None:
        c, h, w = _check_image_shape("ViT", tuple(in_shape))
        for name, value in (("patch_size", patch_size), ("hidden", hidden), ("depth", depth),
                            ("heads", heads), ("mlp_dim", mlp_dim)):
            check_positive_int(name, value)
        if h % patch_size or w % patch_size:
            raise ValueError(f"image sides {h}x{w} must be multiples of patch_size={patch_size}")
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        super().__init__(hidden, num_classes, bias=bias)
        self.in_shape = (c, h, w)
        self.patch_size = patch_size
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(c, hidden, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, hidden))
        with torch.no_grad():
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(hidden, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, hidden)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]
