"""Concept pretraining: teach the image encoder what the pictures hold before the VLM trains.

Why: a VLM learns what is in its pictures only through the words it must write, and that signal
reaches a from-scratch image encoder weakly: after 30 CPU-minutes, a mini model answered colour
questions barely better than a blind one (docs/evaluation.md). Told the answer directly, the same
encoder learns the things several times faster, and a VLM trained from it grounds better in the
same total time. `tinyvlm train --concept-pretrain 0.2` spends the first fifth of the budget on this.

A record a plug-in labels (tinyvlm.plugins) gets its concepts from that plug-in, per patch. The
picture-book world reads them off its scene graph: each patch learns what covers it and where that
is (tinyvlm/world/concepts.py). Dense labels teach faster than one label for the whole picture.
Other records use their caption words: the picture as a whole learns which content words describe
it, scored by its best patch (multiple-instance learning).

The same head then guides decoding (`Sampling(ground=p)`): `Grounding` is the core's constraint,
and a plug-in extends it with the rules its own grammar allows.
"""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import plugins
from .data.records import Record
from .errors import TinyVLMError
from .text import words as split_words

# Words that say nothing about what a picture shows.
STOPWORDS = frozenset("""a an the and or but so of in on at to by for from with into onto over under
up down out off is are was were be been being am do does did has have had it its this that these
those there here then than as very too also not no yes i me my we us our you your he him his she her
they them their one what who which when where how can see look""".split())


def caption_words(record: Record) -> set[str]:
    texts = [record.text, *(record.references or [])]
    return {w for t in texts if t for w in split_words(t) if len(w) > 2 and w not in STOPWORDS}


def usable(record: Record) -> bool:
    """Concept pretraining reads single-image records that a plug-in labels (a scene graph) or
    that have a caption."""
    return len(record.images) == 1 and (plugins.for_record(record) is not None or bool(caption_words(record)))


def build_vocab(records: Iterable[Record], scan: int = 20_000, min_count: int = 2) -> list[str]:
    """The concepts worth learning, from up to `scan` records: a plug-in's concepts (a scene's)
    seen `min_count` times; caption words seen in at least `min_count` records but no more than
    half of them (a word in every caption tells pictures apart no better than the blank page)."""
    labelled, words, n = Counter(), Counter(), 0
    for r in itertools.islice((r for r in records if usable(r)), scan):
        n += 1
        plugin = plugins.for_record(r)
        if plugin is not None:
            labelled.update(plugin.concepts(r))
        else:
            words.update(caption_words(r))
    vocab = sorted(c for c, k in labelled.items() if k >= min_count)
    vocab += sorted(w for w, k in words.items() if min_count <= k <= n / 2 and w not in labelled)
    if not vocab:
        raise TinyVLMError("concept pretraining found nothing to learn: it needs single-image records with a "
                           "scene graph, or captions whose content words recur (train without --concepts)")
    return vocab


def targets(record: Record, index: dict[str, int], grid: int) -> torch.Tensor:
    """0/1 targets: (grid * grid, concepts) per patch from the plug-in that labels the record,
    or (concepts,) for the whole picture from caption words."""
    plugin = plugins.for_record(record)
    if plugin is not None:
        return plugin.targets(record, index, grid)
    t = torch.zeros(len(index))
    t[[index[w] for w in caption_words(record) if w in index]] = 1
    return t


class ConceptHead(nn.Module):
    """One linear score per concept at every patch; thrown away once pretraining ends."""

    def __init__(self, width: int, n_concepts: int):
        super().__init__()
        self.proj = nn.Linear(width, n_concepts)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.proj(encoded[:, 1:])  # (N, 1 + P, D) encoder output -> (N, P, concepts), [CLS] skipped

    def patch_probs(self, encoded: torch.Tensor) -> torch.Tensor:
        """(N, 1 + P, D) -> (N, P, concepts): how sure the head is of each concept at each patch;
        a concept is in the picture as surely as at its best patch, the reading concept_f1 scores."""
        return torch.sigmoid(self(encoded).float())


def word_tokens(tokenizer, word: str) -> list[int]:
    """The token ids that name a one-word concept mid-sentence, singular or plural: " duck",
    " ducks", " boxes", each where the tokenizer has it as one token (a word split into pieces
    cannot be banned without banning the pieces' other words)."""
    ids = [tokenizer.encode(f" {w}") for w in (word, word + "s", word + "es")]
    return sorted({i[0] for i in ids if len(i) == 1})


class Grounding:
    """Grounded decoding (`Sampling(ground=p)`), the core's rule: a row may not write a word the
    concept head finds in no patch of the row's pictures. That is a one-word concept (a kind, a
    caption word), or the value of an attribute concept ("sunny" with no patch "weather sunny").
    Why: most false claims of a small model name something its own encoder had rated absent
    (docs/evaluation.md#grounded-decoding).

    It is a decoding constraint: called with the ids each row wrote so far and the next logits,
    it returns the tokens each row may not write next. A plug-in whose grammar says more extends
    it (the world's: tinyvlm/world/grounding.py). `probs` holds each row's head probabilities,
    (patches, concepts), over all its pictures. `context` is each row's text before what it
    writes, its prompt and prefix, which a plug-in's rules read.

    The concepts are parsed once: "lead last", where `last` is a one-word concept, is a phrase
    about a thing ("red duck", "left of cat"). "lead value" with a one-word lead is an attribute
    value ("colour red"). A concept of several words that the training scenes never held
    ("purple duck", under build_vocab's min_count) is taken as absent."""

    def __init__(self, probs: list[torch.Tensor], concepts: list[str], tokenizer, threshold: float, vocab_size: int,
                 context: list[str] | None = None):
        self.probs, self.tokenizer, self.threshold = probs, tokenizer, threshold  # probs: per row, (patches, concepts)
        self.context = context or [""] * len(probs)
        self.index = {c: i for i, c in enumerate(concepts)}
        self.words = {c: ids for c in concepts if " " not in c and (ids := word_tokens(tokenizer, c))}
        self.phrases = defaultdict(dict)  # ("left", "of") -> {"cat": index of "left of cat"}
        self.attributes = defaultdict(dict)  # "colour" -> {token id of " red": ("red",)}, a lead of "red duck"
        values = {}  # token id of " sunny" -> index of "weather sunny"
        for c, i in self.index.items():
            lead, _, last = c.rpartition(" ")
            if lead and last in self.words:
                self.phrases[tuple(lead.split())][last] = i
            elif lead and " " not in lead and len(ids := tokenizer.encode(" " + self.spoken(last))) == 1:
                values[ids[0]] = i
                self.attributes[lead][ids[0]] = (last,)
        self.seen = []  # per row: the one-word concepts some patch holds
        self.anywhere = torch.zeros(len(probs), vocab_size, dtype=torch.bool)
        for row, p in enumerate(probs):  # a row without pictures has nothing to ground: nothing banned
            best = p.amax(0) if len(p) else torch.ones(len(concepts))
            self.seen.append({c for c in self.words if best[self.index[c]] >= threshold})
            for c in self.words.keys() - self.seen[-1]:
                self.anywhere[row, self.words[c]] = True
            self.anywhere[row, [t for t, i in values.items() if best[i] < threshold]] = True

    def spoken(self, value: str) -> str:
        """How a sentence writes an attribute's value; a plug-in may say it otherwise."""
        return value

    def __call__(self, new: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """new (B, t) ids written so far, logits (B, V) for the next -> (B, V) True where a row
        may not write next."""
        return self.anywhere.clone()


def concept_loss(scores: torch.Tensor, target_list: list[torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy, a mean per picture: per patch for dense (scene) targets, on the best
    patch's score for whole-picture (caption) targets."""
    losses = []
    for s, t in zip(scores.float(), target_list):
        s = s if t.dim() == 2 else s.max(0).values
        losses.append(F.binary_cross_entropy_with_logits(s, t.to(s.device)))
    return torch.stack(losses).mean()


def concept_f1(scores: torch.Tensor, target_list: list[torch.Tensor]) -> tuple[int, int, int]:
    """(true positives, predicted, actual) over (picture, concept) pairs, a concept counting as
    predicted where its best patch scores above 0: the figures an F1 is made of."""
    pred = scores.float().amax(1) > 0                                   # (N, concepts)
    true = torch.stack([t.amax(0) if t.dim() == 2 else t for t in target_list]).to(pred.device) > 0
    return int((pred & true).sum()), int(pred.sum()), int(true.sum())
