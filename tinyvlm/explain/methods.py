"""Per-word attribution maps: for each content word of a text about a picture, how much each patch
of the picture speaks for it, over the encoder's patch grid (grid_h, grid_w).

Four methods, side by side, each with its own units (UNITS):
- `devil`: DeViL (Dani et al. 2023, "DeViL: Decoding Vision features into Language"): a small
  translator, trained on the frozen encoder's features with dropout per layer and per location
  (translator.py), feeds ONE location's feature of one encoder layer to the frozen decoder; the
  map is the log-probability of the word there (the negative LM loss), so it is open-vocabulary.
- `gradient`: gradient x input on the patch embeddings (Shrikumar et al. 2016; Simonyan et al.
  2014): the first-order change in the word's log-probability from each patch's embedding.
- `rollout`: attention rollout through the encoder (Abnar & Zuidema 2020, "Quantifying attention
  flow in transformers"), then the decoder's attention, mean over layers and heads, from the
  position that writes the word to the image tokens.
- `concept`: the concept head's per-patch probability of the word (a model trained with
  --concept-pretrain --freeze-encoder keeps one; tinyvlm/concepts.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..concepts import STOPWORDS
from ..data.batches import describe_prompt
from ..errors import TinyVLMError

METHODS = ("devil", "gradient", "rollout", "concept")
UNITS = {
    "devil": "log-probability of the word (nats) given only that location's feature; higher = more likely there",
    "gradient": "gradient x input: change in the word's log-probability (nats, first order) from the patch's embedding",
    "rollout": "share of the word's attention reaching the patch (encoder rollout x decoder attention; sums to <= 1)",
    "concept": "the concept head's probability (0-1) that the patch holds the word",
}
_WORD = re.compile(r"[A-Za-z]+")
# Words that count or place things rather than name what a location shows: no map for them.
NOT_SHOWN = frozenset("two three four five six seven eight nine ten many next left right above below".split())


@dataclass
class WordMap:
    """One word of the text (characters start:end of `Explanation.text`) and its map, an array
    (grid_h, grid_w) over the model's square picture, row-major like the patches."""
    word: str
    start: int
    end: int
    map: np.ndarray


@dataclass
class Explanation:
    """What `TinyVLM.explain` returns: the text, the method, its units, the encoder layer read
    (devil), the patch grid (grid_h, grid_w) and one WordMap per content word the method maps.
    `picture` (width, height) and `fit` say how the original picture became the model's square,
    so `in_picture` can map a map back onto the original picture's pixels."""
    text: str
    method: str
    units: str
    layer: int | None
    grid: tuple[int, int]
    picture: tuple[int, int]
    fit: str
    image_size: int
    words: list[WordMap] = field(default_factory=list)

    def _placement(self) -> tuple[float, float, float]:
        """(scale, ox, oy): original pixel (x, y) sits at (x * scale + ox, y * scale + oy) in the
        model's square, as data/images.py's fit_square put it there."""
        w, h = self.picture
        S = self.image_size
        if self.fit == "pad":  # scaled by size / longest side, centred on grey
            scale = S / max(w, h)
            return scale, (S - max(1, round(w * scale))) // 2, (S - max(1, round(h * scale))) // 2
        scale = S / min(w, h)  # crop: scaled by size / shortest side, centred, edges cut
        return scale, (S - w * scale) / 2, (S - h * scale) / 2

    def in_picture(self, m: np.ndarray) -> np.ndarray:
        """A (grid_h, grid_w) map -> (height, width) over the original picture's pixels: each pixel
        takes the value of the patch it was drawn into (a letterbox's grey margin is cut away; a
        centre-crop's cut edges, which the model never saw, are NaN)."""
        w, h = self.picture
        S, (gh, gw) = self.image_size, self.grid
        scale, ox, oy = self._placement()
        u = (np.arange(w) + 0.5) * scale + ox  # each pixel centre's place in the square
        v = (np.arange(h) + 0.5) * scale + oy
        cu, cv = np.floor(u / S * gw).astype(int), np.floor(v / S * gh).astype(int)
        inside = (cv[:, None] >= 0) & (cv[:, None] < gh) & (cu[None] >= 0) & (cu[None] < gw)
        out = np.asarray(m, dtype=np.float64)[cv.clip(0, gh - 1)[:, None], cu.clip(0, gw - 1)[None]]
        return np.where(inside, out, np.nan)

    def peak(self, m: np.ndarray) -> tuple[float, float]:
        """The centre of the map's highest patch, as (x, y) in the original picture's pixels (the
        pointing game's point; the first of equal highest patches)."""
        (gh, gw), S = self.grid, self.image_size
        r, c = np.unravel_index(int(np.nanargmax(np.asarray(m, dtype=np.float64))), (gh, gw))
        scale, ox, oy = self._placement()
        return ((c + 0.5) * S / gw - ox) / scale, ((r + 0.5) * S / gh - oy) / scale

    def to_dict(self) -> dict:
        return {"text": self.text, "method": self.method, "units": self.units, "layer": self.layer,
                "grid": list(self.grid), "picture": list(self.picture),
                "words": [{"word": w.word, "start": w.start, "end": w.end,
                           "map": np.round(w.map.astype(np.float64), 6).tolist()} for w in self.words]}


def content_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word worth a map: longer than two letters, not a function word,
    a number or a relation."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)
            if len(m.group()) > 2 and m.group().lower() not in STOPWORDS | NOT_SHOWN]


class Scorer:
    """A text about one picture, laid out once as the model reads it: the ShortDesc prompt with the
    picture, then the text as the assistant's turn. `spans[i]` holds the sequence positions of the
    tokens spelling words[i]; the word's log-probability is read from the positions before them."""

    def __init__(self, vlm, text: str, image_tokens: int):
        self.text = text.strip()
        if not self.text:
            raise TinyVLMError("the text to explain is empty")
        tok = vlm.tokenizer
        self.ids = tok.encode_conversation([("user", describe_prompt("short"))], [image_tokens], self.text).ids
        offsets = tok.text_offsets(self.text)
        first = len(self.ids) - len(offsets)
        self.words, self.spans = [], []
        for word, a, b in content_words(self.text):
            pos = [first + i for i, (s, e) in enumerate(offsets) if s < b and e > a]
            if pos:
                self.words.append((word, a, b))
                self.spans.append(pos)

    def word_logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """logits (B, T, V), ids (B, T) -> (B, words): each word's summed token log-probability."""
        logp = logits.float().log_softmax(-1)
        cols = []
        for pos in self.spans:
            p = torch.tensor(pos)
            cols.append(logp[:, p - 1].gather(-1, ids[:, p, None]).squeeze(-1).sum(-1))
        return torch.stack(cols, -1) if cols else logp.new_zeros(logp.shape[0], 0)


def grid_of(cfg) -> tuple[int, int]:
    g = cfg.vit_image_size // cfg.vit_patch_size
    return g, g


def gradient_maps(vlm, pixels: torch.Tensor, scorer: Scorer) -> list[np.ndarray]:
    """Gradient x input on the patch embeddings (the stem's output, before [CLS] and positions),
    summed over channels: one (grid_h, grid_w) map per word."""
    model, store = vlm.model, {}

    def keep(module, inputs, out):  # the patch embeddings, as a tensor the gradient reaches
        out = out if out.requires_grad else out.detach().requires_grad_()
        store["x"] = out
        return out

    hook = model.vision.patch.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            ids = torch.tensor([scorer.ids], device=pixels.device)
            features = list(model.connector(model.vision(pixels)))
            logits, _ = model(ids, features=features)
            scores = scorer.word_logprobs(logits, ids)[0]
            x, maps = store["x"], []
            for i in range(len(scorer.spans)):
                g, = torch.autograd.grad(scores[i], x, retain_graph=i < len(scorer.spans) - 1)
                maps.append((g * x).sum(1)[0].detach().float().cpu().numpy())  # (N, C, gh, gw) -> (gh, gw)
    finally:
        hook.remove()
    return maps


@torch.no_grad()
def rollout_maps(vlm, pixels: torch.Tensor, scorer: Scorer) -> list[np.ndarray]:
    """Encoder attention rollout, then the decoder's attention from the position that writes each
    word (mean over layers and heads) to the picture's tokens: one (grid_h, grid_w) map a word."""
    cfg = vlm.cfg
    if cfg.mp_summary_tokens:
        raise TinyVLMError("rollout follows image tokens back to patches, but this model's summariser mixes "
                           "every patch into each token: use --method gradient, concept or devil")
    ids = torch.tensor([scorer.ids], device=pixels.device)
    tr = vlm.model.trace(ids, pixels)
    P = tr.vision_hidden_states[0].shape[1]  # 1 + patches
    eye = torch.eye(P, device=pixels.device)
    rollout = eye
    for att in tr.vision_attentions:  # (1, heads, P, P): half the residual stream, half attention
        a = 0.5 * att[0].float().mean(0) + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    # what each image token stands for in patches: [CLS] its own row; a pixel-shuffled token the
    # mean of its s x s patches' rows
    g, s = grid_of(cfg)[0], cfg.mp_pixel_shuffle
    patch_rows = rollout[1:].view(g // s, s, g // s, s, P).permute(0, 2, 1, 3, 4).reshape(-1, s * s, P).mean(1)
    tokens = torch.cat([rollout[:1], patch_rows])  # (image tokens, 1 + patches)
    dec = torch.stack(tr.attentions)[:, 0].float().mean((0, 1))  # (T, T)
    img = tr.image_positions[0].nonzero().flatten()
    maps = []
    for pos in scorer.spans:
        to_patches = dec[pos[0] - 1, img] @ tokens  # (1 + patches,)
        maps.append(to_patches[1:].view(g, g).cpu().numpy())
    return maps


def concept_index(concepts: list[str], word: str) -> int | None:
    """The concept a word names, singular or plural ("ducks", "boxes" -> "duck", "box")."""
    index = {c: i for i, c in enumerate(concepts)}
    for cand in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
        if cand and cand in index:
            return index[cand]
    return None


@torch.no_grad()
def concept_maps(vlm, pixels: torch.Tensor, scorer: Scorer) -> list[np.ndarray | None]:
    """The concept head's probability of each word at each patch; None for a word that is not
    one of its concepts."""
    if vlm.concept_head is None:
        raise TinyVLMError("the concept method needs the model's concept head, which only a run trained with "
                           "--concept-pretrain and --freeze-encoder keeps: use --method gradient, rollout or devil")
    probs = vlm.concept_head.patch_probs(vlm.model.vision(pixels))[0]  # (patches, concepts)
    g = grid_of(vlm.cfg)
    out = []
    for word, _, _ in scorer.words:
        i = concept_index(vlm.concepts, word)
        out.append(None if i is None else probs[:, i].view(*g).cpu().numpy())
    return out
