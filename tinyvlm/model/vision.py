"""ViT-like image encoder: conv patch embedding, a [CLS] token, learned positions, pre-LN blocks."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig
from .transformer import Block


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        n_patches = (cfg.vit_image_size // cfg.vit_patch_size) ** 2
        self.patch = nn.Conv2d(3, cfg.vit_width, kernel_size=cfg.vit_patch_size, stride=cfg.vit_patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.vit_width))
        self.pos = nn.Parameter(torch.zeros(1, n_patches + 1, cfg.vit_width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.vit_width, cfg.vit_heads, cfg.vit_mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.vit_depth))
        self.ln = nn.LayerNorm(cfg.vit_width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1 + patches, vit_width); token 0 is [CLS], the rest row-major patches."""
        x = self.patch(images).flatten(2).transpose(1, 2)  # (N, P, C)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.drop(x)
        for block in self.blocks:
            x, _ = block(x)
        return self.ln(x)
