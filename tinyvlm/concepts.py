"""Concept pretraining: teach the image encoder what the pictures hold before the VLM trains.

Why: a VLM learns what is in its pictures only through the words it must write, and that signal
reaches a from-scratch image encoder weakly: after 30 CPU-minutes, a mini model answered colour
questions barely better than a blind one (docs/evaluation.md). Told the answer directly, the same
encoder learns the things several times faster, and a VLM trained from it grounds better in the
same total time. `tinyvlm train --concept-pretrain 0.2` spends the first fifth of the budget on this.

A record's concepts come from its scene graph when it has one (the picture-book world): each patch
learns the kind, colour, size and count of every thing whose box covers it, and every patch learns
the place, time and weather. Dense labels teach faster than one label for the whole picture
(held-out colour accuracy 0.62 against 0.51 after 3 minutes, benchmarks/vision_probe.py's setup).
Records without a scene use their caption words: the picture as a whole learns which content
words describe it, scored by its best patch (multiple-instance learning).
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.records import Record
from .errors import TinyVLMError

# Words that say nothing about what a picture shows.
STOPWORDS = frozenset("""a an the and or but so of in on at to by for from with into onto over under
up down out off is are was were be been being am do does did has have had it its this that these
those there here then than as very too also not no yes i me my we us our you your he him his she her
they them their one what who which when where how can see look""".split())


def thing_concepts(thing: dict) -> list[str]:
    """What a patch covered by this thing should know: its kind, its kind with each attribute, and
    each attribute alone. Why the last: with only "big duck", "big cat", ... each kind's bigness
    is a feature of its own, and the decoder would have to learn to read it kind by kind; "size
    big" makes the encoder keep one direction for it that every question can read."""
    kind = thing["kind"]
    attrs = {name: thing[name] for name in ("colour", "size", "count")}
    return [kind, *(f"{v} {kind}" for v in attrs.values()), *(f"{name} {v}" for name, v in attrs.items())]


def setting_concepts(scene: dict) -> list[str]:
    """What every patch should know: where and when the picture is."""
    return [f"place {scene['place']}", f"time {scene['time']}", f"weather {scene['weather']}"]


def caption_words(record: Record) -> set[str]:
    texts = [record.text, *(record.references or [])]
    return {w for t in texts if t for w in re.findall(r"[a-z]+", t.lower()) if len(w) > 2 and w not in STOPWORDS}


def usable(record: Record) -> bool:
    """Concept pretraining reads single-image records with a scene graph or a caption."""
    return len(record.images) == 1 and (record.scene is not None or bool(caption_words(record)))


def build_vocab(records: Iterable[Record], scan: int = 20_000, min_count: int = 2) -> list[str]:
    """The concepts worth learning, from up to `scan` records: scene concepts seen `min_count` times;
    caption words seen in at least `min_count` records but no more than half of them (a word in
    every caption tells pictures apart no better than the blank page)."""
    scene, words, n = Counter(), Counter(), 0
    for r in itertools.islice((r for r in records if usable(r)), scan):
        n += 1
        if r.scene is not None:
            scene.update({c for t in r.scene["things"] for c in thing_concepts(t)} | set(setting_concepts(r.scene)))
        else:
            words.update(caption_words(r))
    vocab = sorted(c for c, k in scene.items() if k >= min_count)
    vocab += sorted(w for w, k in words.items() if min_count <= k <= n / 2 and w not in scene)
    if not vocab:
        raise TinyVLMError("concept pretraining found nothing to learn: it needs single-image records with a "
                           "scene graph, or captions whose content words recur (train without --concepts)")
    return vocab


def covered_cells(box: list[float], grid: int) -> list[int]:
    """Row-major patch indices a box (x0, y0, x1, y1 as fractions) covers: cells holding at least a
    fifth of the box or a fifth of the cell, so small things still claim the patch they sit in."""
    x0, y0, x1, y1 = box
    need = 0.2 * min((x1 - x0) * (y1 - y0), 1 / grid ** 2)
    cells = []
    for gy in range(grid):
        for gx in range(grid):
            ox = min(x1, (gx + 1) / grid) - max(x0, gx / grid)
            oy = min(y1, (gy + 1) / grid) - max(y0, gy / grid)
            if ox > 0 and oy > 0 and ox * oy >= need:
                cells.append(gy * grid + gx)
    return cells


def targets(record: Record, index: dict[str, int], grid: int) -> torch.Tensor:
    """0/1 targets: (grid * grid, concepts) per patch from a scene graph, or (concepts,) for the
    whole picture from caption words."""
    if record.scene is None:
        t = torch.zeros(len(index))
        t[[index[w] for w in caption_words(record) if w in index]] = 1
        return t
    t = torch.zeros(grid * grid, len(index))
    t[:, [index[c] for c in setting_concepts(record.scene) if c in index]] = 1
    for thing in record.scene["things"]:
        cols = [index[c] for c in thing_concepts(thing) if c in index]
        for cell in covered_cells(thing["box"], grid):
            t[cell, cols] = 1
    return t


class ConceptHead(nn.Module):
    """One linear score per concept at every patch; thrown away once pretraining ends."""

    def __init__(self, width: int, n_concepts: int):
        super().__init__()
        self.proj = nn.Linear(width, n_concepts)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.proj(encoded[:, 1:])  # (N, 1 + P, D) encoder output -> (N, P, concepts), [CLS] skipped

    def picture_probs(self, encoded: torch.Tensor) -> torch.Tensor:
        """(N, 1 + P, D) -> (N, concepts): how sure the head is that each concept is somewhere in
        the picture (its best patch), the reading concept_f1 scores."""
        return torch.sigmoid(self(encoded).float().amax(1))


def word_tokens(tokenizer, word: str) -> list[int]:
    """The token ids that name a one-word concept mid-sentence, singular or plural: " duck",
    " ducks", " boxes", each where the tokenizer has it as one token (a word split into pieces
    cannot be banned without banning the pieces' other words)."""
    ids = [tokenizer.encode(f" {w}") for w in (word, word + "s", word + "es")]
    return sorted({i[0] for i in ids if len(i) == 1})


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
