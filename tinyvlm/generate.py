"""The one decoding loop: batched, left-padded prompts, KV cache, greedy or sampled.

Prompts of different lengths are left-padded so every row's next token sits in the last column;
a boolean mask keeps padding out of attention and position ids count only real tokens, so a row
decodes the same alone or in a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import TinyVLMError
from .model import VisionLanguageModel
from .tokenizer import EOS_ID, IMAGE_ID, PAD_ID, SPECIALS


@dataclass
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the text (CTRL-style)
    seed: int | None = None
    ground: float = 0.0       # > 0: never name a concept the model's concept head rates below this (TinyVLM.generate)

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise TinyVLMError("sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty > 0")
        if self.max_new_tokens < 1:
            raise TinyVLMError("max_new_tokens must be at least 1")
        if not 0 <= self.ground < 1:
            raise TinyVLMError(f"ground is a probability threshold, 0 <= ground < 1 (0 = off); got {self.ground}")


def left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, T) and mask (B, T), True for real tokens."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = True
    return ids, mask


def _attention_mask(valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """valid (B, T_k) -> (B, 1, q_len, T_k): causal over the last q_len keys, padding masked out.
    Each position may always see itself, so rows of pure padding never go NaN."""
    B, Tk = valid.shape
    causal = torch.ones(q_len, Tk, dtype=torch.bool, device=valid.device).tril(Tk - q_len)
    self_ = torch.zeros_like(causal)
    self_[:, Tk - q_len:] = torch.eye(q_len, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | self_)[:, None]


def _next_token(logits: torch.Tensor, history: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """logits (B, V), history (B, T) token ids so far -> next ids (B,)"""
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, history, True)
        seen[:, : len(SPECIALS)] = False  # image/pad/bos are not "words already said"
        penalised = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)


@torch.no_grad()
def generate(model: VisionLanguageModel, prompts: list[list[int]], images: torch.Tensor | None,
             sampling: Sampling = Sampling(), use_cache: bool = True,
             banned: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[list[int]]:
    """Continue each prompt (token ids with image slots already expanded) until <|eos|> or
    max_new_tokens. `images` holds the prompts' images in order of appearance; `banned` maps the
    ids written so far (B, t) and the next logits (B, V) to (B, V), True where a row may not
    emit a token next (grounded decoding, concepts.Grounding). Returns the new ids."""
    model.eval()
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    if longest >= model.cfg.lm_max_len:
        raise TinyVLMError(f"prompt of {longest} tokens is too long: the model reads at most "
                           f"{model.cfg.lm_max_len - 1} (images take {model.cfg.image_tokens} each)")
    steps = min(sampling.max_new_tokens, model.cfg.lm_max_len - longest)
    gen = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None

    ids, valid = (t.to(device) for t in left_pad(prompts))
    x = model.embed(ids, images.to(device) if images is not None else None)  # image features once
    history = ids.masked_fill(ids == IMAGE_ID, PAD_ID)
    out = torch.full((len(prompts), steps), PAD_ID, dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    cache, new_x = None, x
    for t in range(steps):
        positions = (valid.cumsum(-1) - 1).clamp(min=0)
        if use_cache and cache is not None:  # feed only the newest token; keys/values are cached
            h, cache = model.decoder(new_x, positions[:, -1:], _attention_mask(valid, 1), cache)
        else:
            h, cache = model.decoder(x, positions, _attention_mask(valid, x.shape[1]))
        logits = model.decoder.head(h[:, -1])
        if banned is not None:
            logits = logits.masked_fill(banned(out[:, :t], logits).to(device), float("-inf"))
        nxt = _next_token(logits, history, sampling, gen).cpu()
        nxt = nxt.masked_fill(done, PAD_ID)
        out[:, t] = nxt
        done |= nxt == EOS_ID
        if bool(done.all()):
            break
        new_x = model.decoder.tok(nxt.to(device))[:, None]
        x = torch.cat([x, new_x], dim=1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        history = torch.cat([history, nxt[:, None].to(device)], dim=1)
    rows = [row.tolist() for row in out[:, : t + 1]]
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows]
