"""Connector (modality projector): image features -> decoder-width tokens.

Optional pixel-shuffle first folds each s x s neighbourhood of patches into one token (s^2 times
fewer, s^2 times wider image tokens), trading a bigger projection for a shorter decoder sequence.
Or a summariser (`mp_summary_tokens` K > 0): K learned queries read all the patches, and the
decoder reads K summary tokens and [CLS], whatever the picture's size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig
from .reduce import size_bias
from .transformer import MLP, attend


class Summariser(nn.Module):
    """K learned query tokens cross-attend to the encoder's patch tokens, then an MLP (one pre-LN
    cross-attention block): a small abstraction decoder, as in BUS (Bottom-Up Patch Summarization)
    and the Q-Former / Perceiver-resampler line. Trained with the VLM, it learns which of the
    picture's content the decoder needs, so the decoder reads K tokens instead of every patch."""

    def __init__(self, width: int, heads: int, k: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.queries = nn.Parameter(torch.randn(1, k, width) * 0.02)
        self.ln_q, self.ln_kv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, patches: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """patches (N, P, C), each standing for size (N, P, 1) patches (token merging; None = 1)
        -> (N, K, C) summary tokens."""
        N, P, C = patches.shape
        heads = lambda t: t.view(N, -1, self.heads, C // self.heads).transpose(1, 2)  # (N, heads, T, C/heads)
        q = heads(self.q(self.ln_q(self.queries)).expand(N, -1, -1))
        k, v = (heads(t) for t in self.kv(self.ln_kv(patches)).split(C, dim=2))
        y, _ = attend(q, k, v, size_bias(size), False, self.dropout if self.training else 0.0)
        x = self.queries + self.proj(y.transpose(1, 2).reshape(N, -1, C))
        return x + self.mlp(self.ln2(x))


class Connector(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.s = cfg.mp_pixel_shuffle
        self.grid = cfg.vit_image_size // cfg.vit_patch_size
        self.proj = nn.Linear(cfg.vit_width * self.s ** 2, cfg.lm_width)
        # after pixel-shuffle, [CLS] (not shuffled) needs a projection of its own width
        self.cls_proj = nn.Linear(cfg.vit_width, cfg.lm_width) if self.s > 1 else None
        self.summary = (Summariser(cfg.vit_width, cfg.vit_heads, cfg.mp_summary_tokens, cfg.vit_mlp_ratio, cfg.dropout)
                        if cfg.mp_summary_tokens else None)
        self.act = nn.GELU()

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """(N, g*g, C) -> (N, (g/s)^2, C*s^2)"""
        N, _, C = x.shape
        g, s = self.grid, self.s
        x = x.view(N, g // s, s, g // s, s, C).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(N, (g // s) ** 2, s * s * C)

    def forward(self, feats: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1 + g*g, vit_width) -> (N, image_tokens, lm_width). `size` (N, 1 + g*g, 1): how many
        patches each token stands for, after token merging (then there is no grid to shuffle)."""
        if self.summary is not None:
            summary = self.summary(feats[:, 1:], size[:, 1:] if size is not None else None)
            return self.act(self.proj(torch.cat([feats[:, :1], summary], dim=1)))
        if self.s == 1:
            return self.act(self.proj(feats))
        cls, patches = feats[:, :1], feats[:, 1:]
        return self.act(torch.cat([self.cls_proj(cls), self.proj(self.pixel_shuffle(patches))], dim=1))
