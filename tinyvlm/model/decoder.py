"""Small causal language decoder with rotary positions (RoPE) and an explicit KV cache."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig
from .transformer import KV, Block, rope_angles


class Decoder(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.lm_vocab_size, cfg.lm_width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.lm_width, cfg.lm_heads, cfg.lm_mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.lm_depth))
        self.ln = nn.LayerNorm(cfg.lm_width)
        self.head = nn.Linear(cfg.lm_width, cfg.lm_vocab_size, bias=False)
        if cfg.lm_tie_weights:
            self.head.weight = self.tok.weight
        # RoPE's cos and signed sin for every position the context holds, (lm_max_len, head_size)
        # each: a decoding step looks its angles up instead of computing them (a dozen small ops,
        # ~50 us, less a token on a CPU). Not saved: they follow from the config.
        cos, sin = rope_angles(torch.arange(cfg.lm_max_len)[None], cfg.lm_width // cfg.lm_heads, cfg.lm_rope_base)
        self.register_buffer("rope_cos", cos[0, :, 0, 0], persistent=False)
        self.register_buffer("rope_sin", sin[0, :, 0, 0], persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                cache: list[KV] | None = None, trace: bool = False):
        """x: (B, T, C) input embeddings; positions: (B, T) each token's place among its row's real
        tokens; mask: (B, 1, T, T_past + T) bool, True = may attend. None where no row is padded, so
        attention takes PyTorch's fused path with no mask to build or read: plain causal without a
        cache; with a cache, a one-token step that sees every cached key (its own row's past).
        Returns the final hidden states (B, T, C) and the new cache; the caller applies `head`
        only where it needs logits (training skips picture and prompt positions, generation needs
        only the last). With `trace`, also the hidden states entering each block and after the
        final norm (depth + 1 of (B, T, C)) and each block's attention weights (B, heads, T, T_k)."""
        if torch.compiler.is_compiling():  # an exported graph computes them: no table baked into the file
            rope = rope_angles(positions, self.cfg.lm_width // self.cfg.lm_heads, self.cfg.lm_rope_base)
        else:
            rope = self.rope_cos[positions][:, :, None, None], self.rope_sin[positions][:, :, None, None]
        x = self.drop(x)
        new_cache, states, attentions = [], [], []
        for i, block in enumerate(self.blocks):
            states.append(x)
            x, kv, weights = block(x, mask, is_causal=mask is None and not cache, past=cache[i] if cache else None, rope=rope,
                                   need_weights=trace)
            new_cache.append(kv)
            attentions.append(weights)
        x = self.ln(x)
        return (x, new_cache, states + [x], attentions) if trace else (x, new_cache)
