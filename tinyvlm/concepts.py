"""Concept pretraining: teach the image encoder what the pictures hold before the VLM trains.

Why: a VLM learns what is in its pictures only through the words it must write, and that signal
reaches a from-scratch image encoder weakly: after 30 CPU-minutes, a mini model answered colour
questions barely better than a blind one (docs/evaluation.md). Told the answer directly, the same
encoder learns the things several times faster, and a VLM trained from it grounds better in the
same total time. `tinyvlm train --concept-pretrain 0.2` spends the first fifth of the budget on this.

A record's concepts come from its scene graph when it has one (the picture-book world): each patch
learns the kind, colour, size and count of every thing whose box covers it and where that thing
is from the others ("left of cat"), and every patch learns the place, time and weather. Dense
labels teach faster than one label for the whole picture (held-out colour accuracy 0.62 against
0.51 after 3 minutes, benchmarks/vision_probe.py's setup).
Records without a scene use their caption words: the picture as a whole learns which content
words describe it, scored by its best patch (multiple-instance learning).
"""
from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.records import Record
from .world.describe import REL_WORDS
from .world.scene import RELATIONS, Scene, Thing, relation_holds
from .errors import TinyVLMError
from .text import words as split_words

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


def relation_concepts(scene: dict) -> list[list[str]]:
    """For each thing, where it is from each other thing: "left of cat", "below kite", ... every
    relation the world can check between two things. Why: a patch that knows only what it shows
    leaves the decoder to find two things and compare where they are, which a small decoder does
    not learn in 30 CPU-minutes (left/right claims were right at chance, docs/evaluation.md); a
    patch that knows it is left of the cat lets "a duck to the left of a ..." be read off it."""
    things = [Thing(t["kind"], t["colour"], t["size"], t["count"], t.get("zone", ""), tuple(t["box"]), t.get("on", -1))
              for t in scene["things"]]
    s = Scene(scene["place"], scene["time"], scene["weather"], things)
    rels = [r for r in RELATIONS if r != "in"]  # "in" is only a thing's place, never another thing
    return [[f"{r} {b.kind}" for b in s.things if b is not a for r in rels if relation_holds(s, a, r, b)]
            for a in s.things]


def setting_concepts(scene: dict) -> list[str]:
    """What every patch should know: where and when the picture is."""
    return [f"place {scene['place']}", f"time {scene['time']}", f"weather {scene['weather']}"]


def caption_words(record: Record) -> set[str]:
    texts = [record.text, *(record.references or [])]
    return {w for t in texts if t for w in split_words(t) if len(w) > 2 and w not in STOPWORDS}


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
            scene.update({c for t in r.scene["things"] for c in thing_concepts(t)} | set(setting_concepts(r.scene))
                         | {c for cs in relation_concepts(r.scene) for c in cs})
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
    for thing, rels in zip(record.scene["things"], relation_concepts(record.scene)):
        cols = [index[c] for c in thing_concepts(thing) + rels if c in index]
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


NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
SPOKEN = {d: w for w, d in NUMBER_WORDS.items()}
RELATION_PHRASES = {tuple(r.split()) for r in RELATIONS}
# Where a sentence commits to a thing: a relation, at its first written word and its own ("to",
# "left" of ...), or a size or count ("big", "two"). Not "on" (also "on the grass"), nor colours
# (also "the green grass"): nothing after those need be a thing.
COMMITTING = {tuple(r.split()): {w.split()[0], r.split()[0]} for r, w in REL_WORDS.items() if r not in ("on", "in")}
COMMITTING_ATTRIBUTES = ("size", "count")
HOLD_BACK_FLOOR = 0.1  # hold back a committing word only if the words left hold this much probability
COPULAS = {("is",), ("are",)}  # "the duck is" ... a colour, size or count of the duck
ARTICLES = {"a", "an", "the"}


class Grounding:
    """Grounded decoding (`Sampling(ground=p)`): which words a row may not write next, by what
    the concept head sees in the row's pictures. Why: most false claims of a small model name
    something its own encoder had rated absent (docs/evaluation.md#grounded-decoding).

    Four rules, by the head's probability against `threshold`:
    - anywhere: a word the head finds in no patch: a one-word concept (a kind, a caption word),
      or the value of an attribute concept ("sunny" with no patch "weather sunny");
    - in context: after a concept's leading words in the current sentence, with no thing named
      since, a thing that would complete a concept the head does not see ("red" ... "duck" needs
      "red duck", "two" ... "ducks" needs "2 duck"). A relation must hold at a patch of the
      sentence's subject: "a duck to the left of a cat" needs a patch both "duck" and "left of
      cat", and a thing is never where it is itself. If no thing would be left to name, the
      sentence is already committed and the rule stands aside, so the text stays grammatical;
    - after the subject: a colour, size or count the head does not see on the sentence's
      subject, where the sentence says what the subject is ("the duck is" ... "red" needs "red
      duck"), or where it answers a question about it ("What colour is the duck?" ... "red").
      If the head backs no value of that attribute, the rule stands aside;
    - before committing: a word no thing in sight could complete: the first word of a
      relation, size or count ("to" the left of, "big", "two"), and once a sentence must name
      a thing, any colour, size or count that would leave none to name. So a claim the head
      cannot back is not begun, and the committed guard seldom has to stand aside. Unless the
      words left hold under HOLD_BACK_FLOOR of the model's probability ("we go to the park"
      must still be written).

    A sentence's subject is the last thing it names that is not a relation's object ("the duck
    next to the cat": the duck). A combination the training scenes never held ("purple duck",
    under build_vocab's min_count) is taken as absent. `context` is each row's text before what
    it writes (its prompt and prefix), so a given prefix or a question counts as said."""

    def __init__(self, probs: list[torch.Tensor], concepts: list[str], tokenizer, threshold: float, vocab_size: int,
                 context: list[str] | None = None):
        self.probs, self.tokenizer, self.threshold = probs, tokenizer, threshold  # probs: per row, (patches, concepts)
        self.context = context or [""] * len(probs)
        self.index = {c: i for i, c in enumerate(concepts)}
        self.words = {c: ids for c in concepts if " " not in c and (ids := word_tokens(tokenizer, c))}
        self.forms = {f: c for c in self.words for f in (c, c + "s", c + "es")}  # "ducks" -> "duck"
        self.phrases = defaultdict(dict)  # ("left", "of") -> {"cat": index of "left of cat"}
        values, committing = {}, dict(COMMITTING)  # "sunny": index of "weather sunny"; ("big",): {"big"}
        self.attributes = defaultdict(dict)  # "colour" -> {token id of " red": ("red",)}, a lead of "red duck"
        for c, i in self.index.items():
            lead, _, last = c.rpartition(" ")
            if lead and last in self.words:
                self.phrases[tuple(lead.split())][last] = i
            elif lead and " " not in lead and len(ids := tokenizer.encode(" " + SPOKEN.get(last, last))) == 1:
                values[ids[0]] = i
                self.attributes[lead][ids[0]] = (last,)
                if lead in COMMITTING_ATTRIBUTES:
                    committing[(last,)] = {SPOKEN.get(last, last)}
        self.committing = set(committing)
        self.starts = defaultdict(list)  # token id of " to" -> [("left", "of"), ("right", "of")]
        for lead, words in committing.items():
            for word in words:
                if lead in self.phrases and len(ids := tokenizer.encode(" " + word)) == 1:
                    self.starts[ids[0]].append(lead)
        self.seen = []  # per row: the one-word concepts some patch holds
        self.anywhere = torch.zeros(len(probs), vocab_size, dtype=torch.bool)
        for row, p in enumerate(probs):  # a row without pictures has nothing to ground: nothing banned
            best = p.amax(0) if len(p) else torch.ones(len(concepts))
            self.seen.append({c for c in self.words if best[self.index[c]] >= threshold})
            for c in self.words.keys() - self.seen[-1]:
                self.anywhere[row, self.words[c]] = True
            self.anywhere[row, [t for t, i in values.items() if best[i] < threshold]] = True

    def _holds(self, p: torch.Tensor, lead: tuple, word: str, subject: str | None) -> bool:
        i = self.phrases.get(lead, {}).get(word)
        if i is None or (lead in RELATION_PHRASES and word == subject):
            return False  # never in the training scenes; or a thing where it is itself, which no patch tells apart
        score = p[:, i]
        if lead in RELATION_PHRASES and subject is not None:
            score = torch.minimum(score, p[:, self.index[subject]])
        return bool(score.max() >= self.threshold)

    def _read(self, sentence: str) -> tuple[list[str], list[int], str | None]:
        """A sentence's words ("two" as "2"), where it names things, and its subject."""
        words = [NUMBER_WORDS.get(w, w) for w in split_words(sentence, digits=True)]
        named = [i for i, w in enumerate(words) if w in self.forms]
        for i in reversed(named):
            before = tuple(w for w in words[:i] if w not in ARTICLES)
            if not any(before[len(before) - len(r):] == r for r in RELATION_PHRASES):
                return words, named, self.forms[words[i]]
        return words, named, None

    def _sentence(self, text: str) -> tuple[str | None, tuple, bool]:
        """The current sentence of a row's text: its subject, its words since the last thing
        named, and whether it answers a question (then its subject is the question's)."""
        parts = re.split(r"([.!?])", text)
        words, named, subject = self._read(parts[-1])
        replying = not words and len(parts) > 2 and parts[-2] == "?"
        if replying:
            subject = self._read(parts[-3])[2]
        return subject, tuple(words[named[-1] + 1:] if named else words), replying

    def __call__(self, new: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """new (B, t) ids written so far, logits (B, V) for the next -> (B, V) True where a row
        may not write next."""
        banned = self.anywhere.clone()
        if not self.phrases:  # no concept of several words (caption words): nothing depends on context
            return banned
        probs = logits.float().softmax(-1).cpu()
        for row, p in enumerate(self.probs):
            if not len(p):
                continue
            text = f"{self.context[row]} {self.tokenizer.decode(new[row].tolist())}"
            subject, since, replying = self._sentence(text)
            active = [lead for lead in self.phrases
                      if any(since[i:i + len(lead)] == lead for i in range(len(since) - len(lead) + 1))]
            fits = {w for w in self.seen[row] if all(self._holds(p, lead, w, subject) for lead in active)}
            if fits or not active:  # in context, unless the sentence is committed and nothing fits
                for w in self.seen[row] - fits:
                    banned[row, self.words[w]] = True
            if subject is not None and (replying or since in COPULAS):  # after the subject
                for values in self.attributes.values():
                    known = {t: self._holds(p, lead, subject, None) for t, lead in values.items()
                             if subject in self.phrases.get(lead, {})}
                    if any(known.values()):
                        banned[row, [t for t in values if not known.get(t, False)]] = True
            hold = banned[row].clone()  # before committing, unless too little would be left
            for token, leads in self.starts.items():
                if not set(leads) & set(active) and not any(self._holds(p, lead, w, subject)
                                                            for lead in leads for w in fits):
                    hold[token] = True
            if self.committing & set(active):  # a thing must be named: no word that leaves none to name
                for values in self.attributes.values():
                    for token, lead in values.items():
                        if lead in self.phrases and lead not in active and not any(
                                self._holds(p, lead, w, subject) for w in fits):
                            hold[token] = True
            if probs[row][~hold].sum() >= HOLD_BACK_FLOOR:
                banned[row] = hold
        return banned


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
