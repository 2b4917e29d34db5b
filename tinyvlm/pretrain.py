"""Encoder pretraining objectives that need no scene graph: they run on any pictures `tinyvlm train`
reads (world folders, imported Flickr8k, JSONL), before the VLM learns to write.

- MAE (He et al. 2022, "Masked autoencoders are scalable vision learners"): hide most patches,
  encode the visible ones, and let a light decoder rebuild the hidden patches' pixels, each patch
  normalised to zero mean and unit variance (the paper's better target). Pictures alone.
- SigLIP (Zhai et al. 2023, "Sigmoid loss for language image pre-training"): a picture and its
  caption score high, every other pairing in the batch low, each pair judged on its own by a
  sigmoid (no softmax over the batch, so small CPU batches work). The text tower is a bag of the
  VLM's own BPE tokens (a mean of learned embeddings, then a projection): captions are short and
  the tower is thrown away after the stage, so a transformer there buys little.

Both heads are throwaway: only the encoder goes on to the VLM (tinyvlm/train/stages.py).
Why here: mini's image encoder is one transformer block, and learning only through the words the
VLM must write, it learns scene and colour but hardly objects (docs/flickr8k.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VLMConfig
from .model.transformer import Block

DECODER_WIDTH, DECODER_HEADS = 128, 4  # MAE's decoder and SigLIP's embedding: light, as both papers advise


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, patches, patch * patch * 3), patches row-major as the encoder orders them."""
    N, C, H, W = images.shape
    h, w = H // patch, W // patch
    x = images.reshape(N, C, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(N, h * w, patch * patch * C)


def random_keep(n: int, patches: int, ratio: float, device: torch.device) -> torch.Tensor:
    """(n, visible) indices of the patches each picture keeps, a fresh random share 1 - ratio of
    them (at least one kept, at least one hidden), drawn from torch's generator (the loop seeds it
    per step)."""
    visible = min(patches - 1, max(1, round(patches * (1 - ratio))))
    return torch.rand(n, patches, device=device).argsort(1)[:, :visible]


class MAE(nn.Module):
    """The encoder with MAE's light decoder: one pre-LN block of DECODER_WIDTH over the encoded
    visible patches and a shared learned mask token at each hidden one, with its own positions,
    then a linear map to each patch's pixels. forward: pixels (N, 3, H, W) -> the mean squared
    error over hidden patches of their normalised pixels (a scalar)."""

    def __init__(self, encoder: nn.Module, cfg: VLMConfig, mask_ratio: float):
        super().__init__()
        self.encoder, self.mask_ratio, self.patch = encoder, mask_ratio, cfg.vit_patch_size
        self.patches = (cfg.vit_image_size // cfg.vit_patch_size) ** 2
        self.conv_stem = cfg.vit_stem == "conv"
        self.embed = nn.Linear(cfg.vit_width, DECODER_WIDTH)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, DECODER_WIDTH))
        self.pos = nn.Parameter(torch.randn(1, self.patches, DECODER_WIDTH) * 0.02)
        self.block = Block(DECODER_WIDTH, DECODER_HEADS, 4, 0.0)
        self.ln = nn.LayerNorm(DECODER_WIDTH)
        self.out = nn.Linear(DECODER_WIDTH, self.patch * self.patch * 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        N = len(pixels)
        keep = random_keep(N, self.patches, self.mask_ratio, pixels.device)
        hidden = torch.ones(N, self.patches, dtype=torch.bool, device=pixels.device).scatter(1, keep, False)
        seen = pixels
        if self.conv_stem:  # 3x3 convolutions reach across patch borders: blank hidden pixels first
            g = round(math.sqrt(self.patches))
            shown = (~hidden).view(N, 1, g, 1, g, 1).to(pixels.dtype)
            seen = (pixels.view(N, 3, g, self.patch, g, self.patch) * shown).view_as(pixels)
        tokens = self.encoder.visible(seen, keep)[:, 1:]  # the encoded visible patches, [CLS] left out
        x = self.mask_token.expand(N, self.patches, -1).scatter(
            1, keep[..., None].expand(-1, -1, DECODER_WIDTH), self.embed(tokens)) + self.pos
        x, _, _ = self.block(x)
        pred = self.out(self.ln(x))
        target = patchify(pixels, self.patch)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return ((pred - target) ** 2).mean(-1)[hidden].mean()


class SigLIP(nn.Module):
    """The encoder and a bag-of-tokens text tower, scored by SigLIP's pairwise sigmoid loss with a
    learned temperature and bias (initialised as the paper does: t = 10, b = -10). The picture's
    embedding is the mean of its patch tokens (what the VLM reads is every patch, so every patch
    learns). forward: pixels (N, 3, H, W), token ids (T,) with offsets (N,) where each caption
    starts, and `same` (N, N) True where picture i and caption j belong together -> the loss, the
    sum over pairs over N (the paper's normalisation), and the (N, N) logits."""

    def __init__(self, encoder: nn.Module, cfg: VLMConfig):
        super().__init__()
        self.encoder = encoder
        self.image_proj = nn.Linear(cfg.vit_width, DECODER_WIDTH)
        self.words = nn.EmbeddingBag(cfg.lm_vocab_size, DECODER_WIDTH, mode="mean")
        self.text_proj = nn.Linear(DECODER_WIDTH, DECODER_WIDTH)
        self.log_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.b = nn.Parameter(torch.tensor(-10.0))

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.normalize(self.image_proj(self.encoder(pixels)[:, 1:].mean(1)), dim=-1)
        text = F.normalize(self.text_proj(self.words(ids, offsets)), dim=-1)
        logits = image @ text.T * self.log_t.exp() + self.b
        loss = -F.logsigmoid(torch.where(same, 1.0, -1.0) * logits).sum() / len(pixels)
        return loss, logits


__all__ = ["MAE", "SigLIP", "patchify", "random_keep"]
