"""The vision-language model: encoder -> connector -> decoder, with image tokens written into the
decoder's sequence at image slots.

The token sequence carries one IMAGE id per image token of each picture, between the picture's
begin and end markers (tokenizer.py's chat template). `embed` overwrites those positions with the
connector's output, in order: pictures are consumed row by row, left to right, and each may give
its own number of tokens. So one model serves captioning, question answering, conversations and
interleaved few-shot prompts.

Three ways in:
- `forward`: teacher-forced training and scoring over right-padded rows;
- `prefill` then `step`: decoding with a KV cache over left-padded rows (generate.py);
- `trace`: one pass that also returns every layer's hidden states and attention weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import VLMConfig
from ..errors import TinyVLMError
from ..tokenizer import IGNORE, IMAGE_ID
from .connector import Connector
from .decoder import Decoder
from .loss import weighted_cross_entropy
from .reduce import ReduceConfig, group_scores, image_token_count, prune
from .transformer import KV
from .vision import VisionEncoder, resize_positions


@dataclass
class DecodeState:
    """What `step` needs to go on: every layer's keys and values, and which of the columns they
    cover are real tokens (False for left padding)."""
    cache: list[KV]
    valid: torch.Tensor  # (B, T_past) bool


@dataclass
class Trace:
    """A traced pass (`VisionLanguageModel.trace`): logits (B, T, V); the decoder's hidden states
    entering each layer and after the final norm (lm_depth + 1 of (B, T, lm_width)); its attention
    weights per layer (B, heads, T, T); the same for the encoder over each picture (vit_depth + 1
    of (N, 1 + patches, vit_width); (N, heads, 1 + patches, 1 + patches)); and where the image
    tokens sit in the sequence (B, T) bool."""
    logits: torch.Tensor
    hidden_states: list[torch.Tensor]
    attentions: list[torch.Tensor]
    vision_hidden_states: list[torch.Tensor]
    vision_attentions: list[torch.Tensor]
    image_positions: torch.Tensor


def attention_mask(valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """valid (B, T_k) -> (B, 1, q_len, T_k): causal over the last q_len keys, padding masked out.
    Each position may always see itself, so rows of pure padding never go NaN."""
    B, Tk = valid.shape
    causal = torch.ones(q_len, Tk, dtype=torch.bool, device=valid.device).tril(Tk - q_len)
    self_ = torch.zeros_like(causal)
    self_[:, Tk - q_len:] = torch.eye(q_len, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | self_)[:, None]


def padding_mask(valid: torch.Tensor, q_len: int) -> torch.Tensor | None:
    """`attention_mask`, or None where no row is padded (the decoder is then plainly causal, and a
    one-token step sees its whole cache): a batch of one, or of equal prompts, builds no mask and
    attention takes the fused kernel without one. A graph being compiled or exported (ONNX) always
    takes the mask, since it must serve padded batches too."""
    if torch.compiler.is_compiling() or not bool(valid.all()):
        return attention_mask(valid, q_len)
    return None


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.connector = Connector(cfg)
        self.decoder = Decoder(cfg)
        self.apply(self._init_weights)
        self._reduce = ReduceConfig()

    @property
    def reduce(self) -> ReduceConfig:
        """How many visual tokens this model spends at inference (model/reduce.py): chosen at load
        time (TinyVLM.from_pretrained(keep_tokens=, merge=)), not part of `cfg`, never saved."""
        return self._reduce

    @reduce.setter
    def reduce(self, value: ReduceConfig):
        value.check(self.cfg)
        self._reduce = value

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def image_token_counts(self, n_images: int) -> list[int]:
        """How many decoder tokens each of n pictures gives (`cfg.image_tokens`, or fewer under
        `reduce`), for the chat template to leave room."""
        return [image_token_count(self.cfg, self.reduce)] * n_images

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> one (n_i, lm_width) tensor of decoder-width image tokens per picture.
        Under `reduce`: tokens merged in the encoder, then the tokens [CLS] attends to least
        dropped (model/reduce.py)."""
        r, s = self.reduce, self.cfg.mp_pixel_shuffle
        if not r.active:
            return list(self.connector(self.vision(images)))
        keep = image_token_count(self.cfg, r) - 1 if r.keep_tokens < 1 else None
        if s == 1 or keep is None:  # the encoder drops what it need not compute
            feats, size, _ = self.vision.reduced(images, r.merge, keep)
            return list(self.connector(feats, size))
        # one token per s x s group of patches: every patch goes through the shuffle, a group
        # scores its patches' sum, and the connector's output is pruned
        feats, _, scores = self.vision.reduced(images, scores=True)
        scores = group_scores(scores, self.cfg.vit_image_size // self.cfg.vit_patch_size, s)
        return list(prune(self.connector(feats), scores, keep))

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
              features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T) ids + the pictures in order of appearance, as (N, 3, H, W) pixels or as already
        computed `features` -> (B, T, lm_width), with image features at the image slots."""
        x = self.decoder.tok(input_ids)
        slots = input_ids == IMAGE_ID
        if features is None:
            features = self.image_features(images) if images is not None and len(images) else []
        n_tokens = sum(f.shape[0] for f in features)
        if not torch.compiler.is_compiling() and int(slots.sum()) != n_tokens:  # an exported graph checks nothing
            n_slots = int(slots.sum())
            raise TinyVLMError(f"the sequences have {n_slots} image-token slots but the {len(features)} picture(s) "
                               f"give {n_tokens} image tokens")
        if features:
            x = x.masked_scatter(slots.unsqueeze(-1), torch.cat(features).to(x.dtype))
        return x

    def _check_length(self, T: int):
        if T > self.cfg.lm_max_len:
            raise TinyVLMError(f"sequence of {T} tokens exceeds the model's context, lm_max_len {self.cfg.lm_max_len}")

    def forward(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced pass over right-padded sequences. With labels (B, T; IGNORE where no loss,
        already aligned so labels[:, t] is the token after position t) returns (logits at the labelled
        positions, loss: the mean over examples of each example's mean token loss); without,
        (logits for every position, None). `features` replaces `images` with image tokens already
        computed, one (n_i, lm_width) per picture (attribution reads gradients or feeds its own)."""
        B, T = input_ids.shape
        self._check_length(T)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        h, _ = self.decoder(self.embed(input_ids, images, features), positions)
        if labels is None:
            return self.decoder.head(h), None
        keep = labels != IGNORE
        logits = self.decoder.head(h[keep])  # only where there is a target: saves the image positions
        # Each example weighs the same, however long its answer: a one-word answer to "What colour
        # is the ball?" carries as much about the picture as a 30-token description, and a plain
        # token mean would drown it.
        n = keep.sum(1, keepdim=True).clamp(min=1).expand_as(keep)[keep]
        weights = 1.0 / (n * keep.any(1).sum().clamp(min=1))
        return logits, weighted_cross_entropy(logits.float(), labels[keep], weights)

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor, images: torch.Tensor | None = None,
                features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, DecodeState]:
        """Read left-padded prompts (B, T) whose real tokens `valid` (B, T) marks: -> the next-token
        logits (B, V) and the state `step` continues from. Position ids count real tokens only, so
        a row decodes the same alone or in a batch."""
        self._check_length(input_ids.shape[1])
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # long: ONNX sums no bools
        h, cache = self.decoder(self.embed(input_ids, images, features), positions,
                                padding_mask(valid, input_ids.shape[1]))
        return self.decoder.head(h[:, -1]), DecodeState(cache, valid)

    def step(self, next_ids: torch.Tensor, state: DecodeState) -> tuple[torch.Tensor, DecodeState]:
        """Feed one new token per row (B,): -> the following logits (B, V) and the new state. Only the
        new token is computed; earlier keys and values come from the cache."""
        valid = torch.cat([state.valid, torch.ones_like(state.valid[:, :1])], dim=1)
        self._check_length(valid.shape[1])
        positions = state.valid.sum(-1, keepdim=True)  # the new token's place among its row's real tokens
        h, cache = self.decoder(self.decoder.tok(next_ids)[:, None], positions, padding_mask(valid, 1), state.cache)
        return self.decoder.head(h[:, -1]), DecodeState(cache, valid)

    @torch.no_grad()
    def trace(self, input_ids: torch.Tensor, images: torch.Tensor | None = None) -> Trace:
        """One causal pass over unpadded sequences (B, T) that keeps what attribution and probing
        read: every layer's hidden states and attention weights, the encoder's too (see Trace).
        Every picture gives all its tokens here (`cfg.image_tokens`): `reduce` does not apply."""
        B, T = input_ids.shape
        self._check_length(T)
        if images is not None and len(images):
            feats, v_states, v_att = self.vision(images, trace=True)
            features = list(self.connector(feats))
        else:
            features, v_states, v_att = [], [], []
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        h, _, states, att = self.decoder(self.embed(input_ids, features=features), positions,
                                         attention_mask(torch.ones_like(input_ids, dtype=torch.bool), T), trace=True)
        return Trace(self.decoder.head(h), states, att, v_states, v_att, input_ids == IMAGE_ID)

    def reconfigured(self, cfg: VLMConfig) -> "VisionLanguageModel":
        """A new model with these weights under `cfg`: a longer context or another dropout as they are,
        another picture size with the encoder's learned positions resized to its patch grid
        (vision.resize_positions). Raises TinyVLMError where the weights do not fit `cfg`."""
        state = self.state_dict()
        state["vision.pos"] = resize_positions(state["vision.pos"], cfg.vit_image_size // cfg.vit_patch_size)
        model = VisionLanguageModel(cfg).to(self.vision.pos.device)
        model.load_state_dict(state)
        return model

    def num_params(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        d = {"vision": count(self.vision), "connector": count(self.connector), "decoder": count(self.decoder)}
        d["total"] = sum(p.numel() for p in self.parameters())  # tied weights counted once
        return d
