"""Connector (modality projector): image features -> decoder-width tokens.

Optional pixel-shuffle first folds each s x s neighbourhood of patches into one token (s^2 times
fewer, s^2 times wider image tokens), trading a bigger projection for a shorter decoder sequence.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig


class Connector(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.s = cfg.mp_pixel_shuffle
        self.grid = cfg.vit_image_size // cfg.vit_patch_size
        self.proj = nn.Linear(cfg.vit_width * self.s ** 2, cfg.lm_width)
        # after pixel-shuffle, [CLS] (not shuffled) needs a projection of its own width
        self.cls_proj = nn.Linear(cfg.vit_width, cfg.lm_width) if self.s > 1 else None
        self.act = nn.GELU()

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """(N, g*g, C) -> (N, (g/s)^2, C*s^2)"""
        N, _, C = x.shape
        g, s = self.grid, self.s
        x = x.view(N, g // s, s, g // s, s, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(N, (g // s) ** 2, s * s * C)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, 1 + g*g, vit_width) -> (N, image_tokens, lm_width)"""
        if self.s == 1:
            return self.act(self.proj(feats))
        cls, patches = feats[:, :1], feats[:, 1:]
        return self.act(torch.cat([self.cls_proj(cls), self.proj(self.pixel_shuffle(patches))], dim=1))
