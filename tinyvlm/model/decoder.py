"""Small causal language decoder with learned positions and an explicit KV cache."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig
from .transformer import KV, Block


class Decoder(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.lm_vocab_size, cfg.lm_width)
        self.pos = nn.Embedding(cfg.lm_max_len, cfg.lm_width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.lm_width, cfg.lm_heads, cfg.lm_mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.lm_depth))
        self.ln = nn.LayerNorm(cfg.lm_width)
        self.head = nn.Linear(cfg.lm_width, cfg.lm_vocab_size, bias=False)
        if cfg.lm_tie_weights:
            self.head.weight = self.tok.weight

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        """x: (B, T, C) input embeddings; positions: (B, T); mask: (B, 1, T, T_past + T) bool, True =
        may attend (None = plain causal, no cache). Returns final hidden states (B, T, C) and the
        new cache; the caller applies `head` only where it needs logits (training skips image
        and prompt positions, generation needs only the last)."""
        x = self.drop(x + self.pos(positions))
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, is_causal=mask is None, past=cache[i] if cache else None)
            new_cache.append(kv)
        return self.ln(x), new_cache
