"""The vision-language model: encoder -> connector -> decoder, with image tokens written into the
decoder's sequence at image slots.

The token sequence carries `image_tokens` copies of the IMAGE id for each image (see
`tokenizer.expand_image_slots`); `embed` overwrites those positions with the connector's output,
in order: images are consumed row by row, left to right. So one model serves captioning, question
answering and interleaved few-shot prompts with several images.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import VLMConfig
from ..errors import TinyVLMError
from ..tokenizer import IMAGE_ID
from .connector import Connector
from .decoder import Decoder
from .vision import VisionEncoder

IGNORE = -100  # label for positions that carry no loss (image, prompt, padding)


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.connector = Connector(cfg)
        self.decoder = Decoder(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids + (N, 3, H, W) images -> (B, T, lm_width) with image features at image slots."""
        x = self.decoder.tok(input_ids)
        slots = input_ids == IMAGE_ID
        n_slots = int(slots.sum())
        n_images = 0 if images is None else images.shape[0]
        if n_slots != n_images * self.cfg.image_tokens:
            raise TinyVLMError(f"sequence has {n_slots} image-token slots but {n_images} image(s) "
                               f"x {self.cfg.image_tokens} tokens were given")
        if n_images:
            img = self.connector(self.vision(images)).to(x.dtype)  # (N, image_tokens, C)
            x = x.masked_scatter(slots.unsqueeze(-1), img.reshape(-1, x.shape[-1]))
        return x

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass over right-padded sequences. With labels (B, T; IGNORE where no loss,
        already aligned so labels[:, t] is the token after position t) returns (logits at the labelled
        positions, loss: the mean over examples of each example's mean token loss); without,
        (logits for every position, None)."""
        B, T = input_ids.shape
        if T > self.cfg.lm_max_len:
            raise TinyVLMError(f"sequence of {T} tokens exceeds lm_max_len {self.cfg.lm_max_len}")
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        h, _ = self.decoder(self.embed(input_ids, images), positions)
        if labels is None:
            return self.decoder.head(h), None
        keep = labels != IGNORE
        logits = self.decoder.head(h[keep])  # only where there is a target: saves the image positions
        # Each example weighs the same, however long its answer: a one-word answer to "What colour
        # is the ball?" carries as much about the picture as a 30-token description, and a plain
        # token mean would drown it.
        per_token = F.cross_entropy(logits.float(), labels[keep], reduction="none")
        n = keep.sum(1, keepdim=True).clamp(min=1).expand_as(keep)[keep]
        return logits, (per_token / n).sum() / keep.any(1).sum().clamp(min=1)

    def num_params(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        d = {"vision": count(self.vision), "connector": count(self.connector), "decoder": count(self.decoder)}
        d["total"] = sum(p.numel() for p in self.parameters())  # tied weights counted once
        return d
