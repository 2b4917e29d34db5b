"""The pre-LayerNorm transformer block shared by the vision encoder (bidirectional) and the
decoder (causal, rotary positions, a KV cache). One implementation, so both halves of the model
read the same."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KV = tuple[torch.Tensor, torch.Tensor]  # (B, heads, T_past, head_size) each
Rope = tuple[torch.Tensor, torch.Tensor]  # cos, signed sin: (B, T, 1, 1, head_size) each


def rope_angles(positions: torch.Tensor, head_size: int, base: float) -> Rope:
    """Rotary position embedding (RoPE; Su et al. 2021, "RoFormer"): cos and sin of each position's
    angle for each pair of channels, (B, T) positions -> two (B, T, 1, 1, head_size) tensors, the
    sin's first half negated (the rotation's sign, paid once per pass instead of once per layer).
    Why rotary: it has no weights, so the context (`lm_max_len`) can grow to many pictures without
    a learned table to fill, and attention sees relative offsets, which is what a left-padded batch
    and a KV cache need."""
    inv = 1.0 / base ** (torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size)
    angles = positions.float()[..., None] * inv  # (B, T, head_size / 2)
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos()[:, :, None, None], torch.cat([-sin, sin], dim=-1)[:, :, None, None]


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate (B, T, ..., head_size) queries and keys by their positions' angles: each pair of
    channels (i, i + head_size/2) turns as a complex number would. One call for queries and keys
    together, so a decoding step runs a few small ops per layer, not a few per tensor."""
    cos, sin = rope
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)  # roll: the halves swapped, in one op


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
           dropout: float, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T / sqrt(d)) v over (B, heads, T, head_size); mask: True = may attend, or a float
    tensor added to the logits (token merging's log sizes, model/reduce.py). Returns
    the output and, with `need_weights`, the attention weights (B, heads, T, T_k).
    Why not always F.scaled_dot_product_attention: in bfloat16 on a CPU its fused kernel is 3-7x
    slower, forward and backward, than these three plain ops at our sizes (a few dozen to a few
    hundred tokens, heads of 12-50), and it took about half of a VLM training step
    (benchmarks/attention.py). Everywhere else the fused kernel is as fast or faster."""
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    if not need_weights and not (q.dtype == torch.bfloat16 and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout), None
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, heads, T, T_k)
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else att + mask
    att = att.softmax(-1)
    return F.dropout(att, dropout, training=dropout > 0) @ v, att if need_weights else None


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                past: KV | None = None, rope: Rope | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, C // self.heads)
        if rope is not None:  # rotate this step's queries and keys by their own positions, in one go
            (q, k), v = apply_rope(qkv[:, :, :2], rope).unbind(2), qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_size)
        if past is not None:  # append this step's keys/values to the cache
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y, weights = attend(q, k, v, mask, is_causal and mask is None, self.dropout if self.training else 0.0,
                            need_weights)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y)), (k, v), weights


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float, dropout: float):
        super().__init__()
        hidden = int(width * ratio)
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                past: KV | None = None, rope: Rope | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, KV, torch.Tensor | None]:
        a, kv, weights = self.attn(self.ln1(x), mask, is_causal, past, rope, need_weights)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv, weights
