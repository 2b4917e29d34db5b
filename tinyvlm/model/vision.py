"""ViT-like image encoder: a patch embedding, a [CLS] token, learned positions, pre-LN blocks."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VLMConfig
from ..errors import TinyVLMError, check_range
from .reduce import bipartite_soft_matching, cls_attention, gather_tokens, merge_weighted, size_bias, top_tokens
from .transformer import Block, attend


class ConvStem(nn.Module):
    """Patch embedding by small 3x3 convolutions with batch norm (Xiao et al. 2021, "Early
    convolutions help transformers see better"). Why: mini's encoder is one transformer block, so
    a linear map per 16-px patch must see a thing's shape on its own, wherever the thing sits
    across patch borders. Stride-2 convs build the shape up from pixels first: told the answer per
    patch, this stem learns the world's kinds and colours much faster per minute than linear
    patches (benchmarks/vision_probe.py --stems patch,conv --dense)."""

    def __init__(self, width: int, patch: int, channels: int = 32):
        super().__init__()
        layers, c = [], 3
        while patch > 2:  # each stride-2 conv halves the picture; a 2x2 projection does the last halving
            # without the norm this stem learns several times slower (benchmarks/vision_probe.py)
            layers += [nn.Conv2d(c, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels), nn.GELU()]
            c, channels, patch = channels, channels * 2, patch // 2
        layers.append(nn.Conv2d(c, width, kernel_size=2, stride=2))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (N, 3, H, W) -> (N, width, H / patch, W / patch)


def resize_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Learned positions for another patch grid: (1, 1 + g*g, C) -> (1, 1 + grid*grid, C).
    [CLS]'s position is kept; the g x g grid's are resized by bicubic interpolation, as a ViT
    fine-tuned at a higher resolution does (Dosovitskiy et al. 2021, "An image is worth 16x16
    words", sec. 3.2; Touvron et al. 2019, FixRes). Why: the patch embedding and the blocks work at
    any size, so the positions are the only weights tied to the picture's size; a model trained at
    low resolution, where steps are cheap, can go on at the target one. Same grid: the table as it is.
    Raises TinyVLMError for a grid that is not a whole number >= 1 or a table that is not square."""
    check_range("grid", grid, 1, integer=True, note="patches a side")
    g = math.isqrt(pos.shape[1] - 1)
    if g * g != pos.shape[1] - 1:
        raise TinyVLMError(f"a position table of {pos.shape[1]} rows is not [CLS] and a square patch grid")
    if grid == g:
        return pos.clone()
    table = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
    table = F.interpolate(table.float(), size=(grid, grid), mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        n_patches = (cfg.vit_image_size // cfg.vit_patch_size) ** 2
        p = cfg.vit_patch_size
        self.patch = (ConvStem(cfg.vit_width, p) if cfg.vit_stem == "conv"
                      else nn.Conv2d(3, cfg.vit_width, kernel_size=p, stride=p))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.vit_width))
        self.pos = nn.Parameter(torch.zeros(1, n_patches + 1, cfg.vit_width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.vit_width, cfg.vit_heads, cfg.vit_mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.vit_depth))
        self.ln = nn.LayerNorm(cfg.vit_width)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1 + patches, vit_width): [CLS] and the patches, with their positions."""
        x = self.patch(images).flatten(2).transpose(1, 2)  # (N, P, C)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.drop(x)

    def forward(self, images: torch.Tensor, trace: bool = False):
        """(N, 3, H, W) -> (N, 1 + patches, vit_width); token 0 is [CLS], the rest row-major patches.
        With `trace`, also the hidden states entering each block and after the final norm
        (depth + 1 tensors of that shape) and each block's attention weights
        (N, heads, 1 + patches, 1 + patches): what attribution methods read."""
        x = self.embed(images)
        states, attentions = [], []
        for block in self.blocks:
            states.append(x)
            x, _, weights = block(x, need_weights=trace)
            attentions.append(weights)
        x = self.ln(x)
        return (x, states + [x], attentions) if trace else x

    def visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder over [CLS] and only the patches `keep` (N, K) names (MAE's encoder, He et al.
        2022: hidden patches are dropped, not replaced) -> (N, 1 + K, vit_width) after the final norm."""
        x = self.embed(images)
        x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], keep)], dim=1)
        for block in self.blocks:
            x, _, _ = block(x)
        return self.ln(x)

    def reduced(self, images: torch.Tensor, merge: int = 0, keep: int | None = None, scores: bool = False):
        """The encoder with fewer tokens (model/reduce.py). With `merge` r, each block merges r
        tokens between its attention and its MLP (ToMe: bipartite soft matching on the keys, [CLS]
        never merged, size-weighted means, proportional attention). With `keep`, only [CLS] and the
        `keep` tokens [CLS] attends to most in the last block come out (FasterVLM), and that block
        spends its queries, attention rows, projection and MLP on them alone: nothing reads a
        dropped token after the last attention, so this equals pruning the encoder's output.
        Returns the tokens after the final norm (N, 1 + P', vit_width), [CLS] first; their sizes
        (N, 1 + P', 1), how many patches each stands for (None without merging); and, with
        `scores`, how much [CLS] attends to each other token in the last block, mean over heads
        (N, P'; a merged token sums its parts'), else None."""
        x, size, score = self.embed(images), None, None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            if last and keep is not None and not merge:
                return self.ln(self._keep_block(block, x, size, keep)), None, None
            a, (keys, _), weights = block.attn(block.ln1(x), size_bias(size),
                                               need_weights=last and (scores or keep is not None))
            x = x + a
            if weights is not None:
                score = cls_attention(weights)
            if merge:
                match = bipartite_soft_matching(keys.mean(1), merge)
                x, size = merge_weighted(match, x, size)
                if score is not None:  # merge the scores alongside: [CLS]'s slot holds 0
                    score = match(torch.cat([torch.zeros_like(score[:, :1]), score], 1)[..., None], "sum")[:, 1:, 0]
            if last and keep is not None:  # the MLP runs on the kept tokens only
                idx = top_tokens(score, keep)
                x, size, score = gather_tokens(x, idx), gather_tokens(size, idx), None
            x = x + block.mlp(block.ln2(x))
        return self.ln(x), size, score

    @staticmethod
    def _keep_block(block: Block, x: torch.Tensor, size: torch.Tensor | None, keep: int) -> torch.Tensor:
        """One block over x (N, T, C) whose output keeps only [CLS] and the `keep` tokens [CLS]
        attends to most -> (N, 1 + keep, C): keys and values for every token, queries for [CLS]
        first (its attention ranks the rest), then for the kept tokens alone."""
        N, T, C = x.shape
        attn = block.attn
        heads = lambda t: t.view(N, -1, attn.heads, C // attn.heads).transpose(1, 2)  # (N, heads, T, C/heads)
        h = block.ln1(x)
        w, b = attn.qkv.weight, attn.qkv.bias  # rows: queries, keys, values
        k, v = (heads(t) for t in F.linear(h, w[C:], b[C:]).split(C, dim=2))
        bias = size_bias(size)
        _, weights = attend(heads(F.linear(h[:, :1], w[:C], b[:C])), k, v, bias, False, 0.0, need_weights=True)
        idx = top_tokens(cls_attention(weights), keep)
        y, _ = attend(heads(F.linear(gather_tokens(h, idx), w[:C], b[:C])), k, v, bias, False, 0.0)
        x = gather_tokens(x, idx) + attn.resid_drop(attn.proj(y.transpose(1, 2).reshape(N, -1, C)))
        return x + block.mlp(block.ln2(x))
