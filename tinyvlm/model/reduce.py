"""Fewer visual tokens, same answers: token reduction at inference, without training.

Two ways, which combine:
- [CLS]-attention pruning after the encoder (FasterVLM; Zhang et al. 2024, "[CLS] Attention is
  All You Need for Training-Free Visual Token Pruning", arXiv 2412.01818): the patches the [CLS]
  token attends to most in the encoder's last block carry what the picture is about; keep that
  share of them, in their order, plus [CLS], so the decoder reads fewer tokens. After
  pixel-shuffle a group of s x s patches is one token: a group scores the sum of its patches'.
- Token merging inside the encoder blocks (ToMe; Bolya et al., ICLR 2023, "Token Merging: Your ViT
  But Faster"): between each block's attention and its MLP, bipartite soft matching pairs every
  token of one half (even places) with its most similar token of the other half (odd places), by
  the cosine of their attention keys, and merges the r best pairs into size-weighted means. A token
  then stands for `size` patches: attention adds log(size) to its logits (proportional attention),
  so a merged token draws as much attention as the patches it replaced. [CLS] is never merged.
  Merged tokens no longer form a grid, so pixel-shuffle cannot follow merging.

Plain functions over tensors; the encoder (vision.py) and the model (vlm.py) call them. The
trained alternative, K learned queries that summarise the patches, is connector.Summariser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import VLMConfig
from ..errors import MAX_COUNT, TinyVLMError, check_range

Merge = Callable[..., torch.Tensor]  # merge(x (N, T, C), mode="sum" | "mean") -> (N, T - r, C)


@dataclass(frozen=True)
class ReduceConfig:
    """How many visual tokens a loaded model spends; chosen at load time, never saved with the
    weights (the same model serves every setting)."""
    keep_tokens: float = 1.0  # share of patch tokens the decoder reads, 0 < share <= 1 ([CLS] always; 1 = all)
    merge: int = 0            # tokens merged per encoder block (ToMe's r); 0 = off

    def __post_init__(self):
        check_range("keep_tokens", self.keep_tokens, 0, 1, lo_open=True, note="a share of the patch tokens, 1 = all")
        check_range("merge", self.merge, 0, MAX_COUNT, integer=True, note="tokens merged per encoder block, 0 = off")

    @property
    def active(self) -> bool:
        return self.keep_tokens < 1 or self.merge > 0

    def check(self, cfg: VLMConfig) -> None:
        """Refuse a setting the model's shape cannot take, in one line."""
        if self.merge and cfg.mp_pixel_shuffle > 1:
            raise TinyVLMError(f"merged tokens form no patch grid, so this model's pixel-shuffle (factor "
                               f"{cfg.mp_pixel_shuffle}) cannot follow merging: use keep_tokens instead of merge")
        if self.keep_tokens < 1 and cfg.mp_summary_tokens:
            raise TinyVLMError(f"this model already reads {cfg.mp_summary_tokens} summary tokens a picture, not "
                               "patches: keep_tokens cannot prune them (merge can still apply)")


def keep_count(n: int, share: float) -> int:
    """How many of n tokens a share keeps: rounded, at least one."""
    return n if share >= 1 else max(1, round(n * share))


def merged_count(tokens: int, r: int) -> int:
    """Tokens left after one merging step over `tokens` ([CLS] first): at most every token of the
    even half but [CLS] can merge away."""
    return tokens - min(r, (tokens + 1) // 2 - 1)


def image_token_count(cfg: VLMConfig, reduce: ReduceConfig) -> int:
    """Decoder tokens one picture gives under `reduce`: what the chat template must leave room for."""
    if cfg.mp_summary_tokens:
        return cfg.image_tokens
    grid = cfg.vit_image_size // cfg.vit_patch_size
    if reduce.merge:
        tokens = grid * grid + 1
        for _ in range(cfg.vit_depth):
            tokens = merged_count(tokens, reduce.merge)
        patches = tokens - 1
    else:
        patches = (grid // cfg.mp_pixel_shuffle) ** 2
    return 1 + keep_count(patches, reduce.keep_tokens)


def cls_attention(weights: torch.Tensor) -> torch.Tensor:
    """One block's attention weights (N, heads, T, T), [CLS] first -> how much [CLS] attends to each
    other token (N, T - 1), the mean over heads (FasterVLM's score)."""
    return weights[:, :, 0, 1:].mean(1)


def group_scores(scores: torch.Tensor, grid: int, s: int) -> torch.Tensor:
    """Per-patch scores (N, grid*grid), row-major -> per pixel-shuffle group (N, (grid/s)^2): the
    sum over each s x s group, in the connector's group order (connector.pixel_shuffle)."""
    N = scores.shape[0]
    return scores.view(N, grid // s, s, grid // s, s).sum(dim=(2, 4)).flatten(1)


def top_tokens(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """scores (N, P) of the tokens after [CLS] -> (N, 1 + keep) places to keep: [CLS] (0), then
    the `keep` best-scored tokens in their original order."""
    idx = scores.topk(keep, dim=1).indices.sort(dim=1).values + 1  # +1: past [CLS]
    return torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (N, T, C), idx (N, T') -> (N, T', C)"""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def prune(tokens: torch.Tensor, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """tokens (N, 1 + P, C), [CLS] first; scores (N, P) for the other tokens -> (N, 1 + keep, C):
    [CLS], then the `keep` best-scored tokens in their original order."""
    return gather_tokens(tokens, top_tokens(scores, keep))


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """ToMe's matching. metric (N, T, c): what makes two tokens alike (the block's keys, mean over
    heads); token 0 is [CLS] and never merges. Tokens at even places (A) each find their most
    similar token at odd places (B) by cosine; the r most similar A tokens merge into their B
    partner. Returns `merge(x (N, T, C), mode) -> (N, T - r', C)` (r' = r, or less when fewer A
    tokens can merge): A's unmerged tokens in order ([CLS] first), then B's, a merged B token
    being the "sum" or "mean" of itself and what merged into it."""
    T = metric.shape[1]
    r = min(r, (T + 1) // 2 - 1)
    if r <= 0:
        return lambda x, mode="sum": x
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        sim = m[:, ::2] @ m[:, 1::2].transpose(1, 2)  # (N, |A|, |B|)
        sim[:, 0] = float("-inf")  # [CLS]
        best, partner = sim.max(dim=-1)  # (N, |A|)
        order = best.argsort(dim=-1, descending=True)
        src = order[:, :r]  # the A tokens that merge away
        stay = order[:, r:].sort(dim=-1).values  # the rest of A, in order: [CLS] stays first
        dst = partner.gather(1, src)

    def merge(x: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        C = x.shape[-1]
        kept = a.gather(1, stay[..., None].expand(-1, -1, C))
        moved = a.gather(1, src[..., None].expand(-1, -1, C))
        b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, C), moved, reduce=mode, include_self=True)
        return torch.cat([kept, b], dim=1)

    return merge


def merge_weighted(merge: Merge, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens x (N, T, C) that each stand for size (N, T, 1) patches (None = 1 each) ->
    (N, T', C) size-weighted means and their sizes (N, T', 1): the mean of the patches is kept."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size, "sum")
    size = merge(size, "sum")
    return x / size, size


def size_bias(size: torch.Tensor | None) -> torch.Tensor | None:
    """Token sizes (N, T, 1) -> (N, 1, 1, T): log(size) added to every query's attention logits
    for each key (proportional attention), or None before any merge."""
    return None if size is None else size.log().transpose(1, 2)[:, None]
