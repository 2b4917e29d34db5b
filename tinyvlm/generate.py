"""The one decoding loop: batched, left-padded prompts, KV cache, greedy or sampled, streamed token
by token.

Prompts of different lengths are left-padded so every row's next token sits in the last column;
a boolean mask keeps padding out of attention and position ids count only real tokens, so a row
decodes the same alone or in a batch. `stream` yields each token as it is decoded, with its
log-probability; `generate` is `stream` collected.

The loop reads a model through `Backend`, its prefill and step: the PyTorch model is one, and an
exported ONNX model run by onnxruntime (tinyvlm/export/runtime.py) is another, so both decode
through this same loop.

A constraint is any callable `(new_ids (B, t), logits (B, V)) -> banned (B, V)`: given the ids each
row has written so far in this call and the next logits, True where that row may not write a token
next. Grounded decoding is one (TinyVLM.grounding); the decoding loop knows nothing else of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import torch

from .config import VLMConfig
from .errors import TinyVLMError, check_range, check_seed
from .tokenizer import EOS_ID, IMAGE_ID, PAD_ID, SPECIALS

Constraint = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Backend(Protocol):
    """What the decoding loop needs of a model (model/vlm.py's VisionLanguageModel has it all):
    `image_features` encodes pictures once; `prefill` reads left-padded prompts (B, T) whose real
    tokens `valid` (B, T) marks and returns the next logits (B, V) and a state; `step` feeds one
    token per row (B,) and returns the following logits and the new state. The state (a KV cache)
    is the backend's own business."""
    cfg: VLMConfig

    def image_token_counts(self, n_images: int) -> list[int]: ...

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor,
                features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]: ...

    def step(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


def backend_device(model: Backend) -> torch.device:
    """Where a backend wants its inputs: a PyTorch model's device; anything else takes CPU tensors."""
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")


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
        check_range("max_new_tokens", self.max_new_tokens, 1, integer=True)
        check_range("temperature", self.temperature, 0, 100, note="0 = greedy")
        check_range("top_k", self.top_k, 0, integer=True, note="0 = off")
        check_range("top_p", self.top_p, 0, 1, lo_open=True, note="1 = off")
        check_range("repetition_penalty", self.repetition_penalty, 1e-3, 100, note="1 = off")
        check_range("ground", self.ground, 0, 1, hi_open=True, note="a probability threshold, 0 = off")
        if self.seed is not None:
            check_seed("seed", self.seed)


def left_pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, T) and mask (B, T), True for real tokens."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = True
    return ids, mask


def _next_token(logits: torch.Tensor, history: torch.Tensor | None, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    """logits (B, V), history (B, T) token ids so far (None without a repetition penalty) -> next ids (B,)"""
    logits = logits.float()
    if s.repetition_penalty != 1.0:
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, history, True)
        seen[:, : len(SPECIALS)] = False  # image/pad/bos are not "words already said"
        penalised = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return logits.argmax(-1)
    # from the best logit down, so a tiny temperature sharpens towards greedy instead of overflowing
    logits = (logits - logits.amax(-1, keepdim=True)) / s.temperature
    if s.top_k:
        kth = logits.topk(min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > s.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)


class Token(NamedTuple):
    """One decoded token of one row: its id and its log-probability (nats) under the model's own
    next-token distribution, before temperature, top-k/top-p, repetition penalty or constraints.
    A row's last token says why it ended: `finish` 'stop' (it is EOS_ID, the turn's end) or
    'length' (max_new_tokens or the context ran out); None before."""
    row: int
    id: int
    logprob: float
    finish: str | None = None


@torch.inference_mode()  # as no_grad, and no version counters or view tracking: less per small op
def stream(model: Backend, prompts: list[list[int]], images: torch.Tensor | None,
           sampling: Sampling = Sampling(), use_cache: bool = True, constraint: Constraint | None = None,
           features: list[torch.Tensor] | None = None) -> Iterator[Token]:
    """Continue each prompt (token ids, image slots already expanded) until <|eos|> or
    max_new_tokens, yielding each row's tokens as they are decoded, step by step. `images` holds
    the prompts' pictures in order of appearance (or `features`, their image tokens already
    computed). Without `use_cache`, every step re-reads the whole sequence (for tests)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    device = backend_device(model)
    longest = max(len(p) for p in prompts)
    if longest >= model.cfg.lm_max_len:
        raise TinyVLMError(f"prompt of {longest} tokens is too long: the model reads at most "
                           f"{model.cfg.lm_max_len - 1} (a picture takes {model.image_token_counts(1)[0] + 2})")
    steps = min(sampling.max_new_tokens, model.cfg.lm_max_len - longest)
    gen = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None

    ids, valid = (t.to(device) for t in left_pad(prompts))
    images = images.to(device) if images is not None else None
    if features is None and images is not None and len(images):
        features = model.image_features(images)  # the pictures are encoded once, whatever use_cache says
    logits, state = model.prefill(ids, valid, features=features)
    # the ids so far, read only by the repetition penalty
    history = ids.masked_fill(ids == IMAGE_ID, PAD_ID) if sampling.repetition_penalty != 1.0 else None
    out = torch.full((len(prompts), steps), PAD_ID, dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(steps):
        raw = logits.float()  # the model's own distribution, before any constraint
        if constraint is not None:
            logits = logits.masked_fill(constraint(out[:, :t], logits).to(device), float("-inf"))
        nxt = _next_token(logits, history, sampling, gen)
        # log p(chosen) = its logit - logsumexp: no full-vocabulary log_softmax
        logp = (raw.gather(1, nxt[:, None]).squeeze(1) - raw.logsumexp(-1)).tolist()
        nxt = nxt.cpu()
        finish = "length" if t == steps - 1 else None
        for row, (i, d) in enumerate(zip(nxt.tolist(), done.tolist())):  # plain ints: no tensor indexing per row
            if not d:
                yield Token(row, i, logp[row], "stop" if i == EOS_ID else finish)
        nxt = nxt.masked_fill(done, PAD_ID)
        out[:, t] = nxt
        done |= nxt == EOS_ID
        if bool(done.all()) or t == steps - 1:
            break
        if history is not None:
            history = torch.cat([history, nxt[:, None].to(device)], dim=1)
        if use_cache:
            logits, state = model.step(nxt.to(device), state)
        else:  # the whole sequence again, for checking the cache
            ids = torch.cat([ids, nxt[:, None].to(device)], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
            logits, state = model.prefill(ids, valid, features=features)


def generate(model: Backend, prompts: list[list[int]], images: torch.Tensor | None,
             sampling: Sampling = Sampling(), use_cache: bool = True, constraint: Constraint | None = None,
             features: list[torch.Tensor] | None = None) -> list[list[int]]:
    """`stream` collected: each row's new ids, without the closing <|eos|>."""
    rows: list[list[int]] = [[] for _ in prompts]
    for tok in stream(model, prompts, images, sampling, use_cache, constraint, features):
        if tok.id != EOS_ID:
            rows[tok.row].append(tok.id)
    return rows
