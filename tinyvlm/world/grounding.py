"""The world's grounded decoding: the core's "anywhere" rule, plus rules that read the world's grammar.

The core constraint (tinyvlm.concepts.Grounding) bans each word the concept head finds in no
patch. The world's sentences say more than a word at a time: "a duck to the left of a cat" is a
claim that the duck and the cat are both there, and that the duck is left of the cat. So this
constraint also reads the sentence written so far and bans what would complete a claim the head
does not see. The world's relations, number words and copulas are what make that reading possible.
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch

from ..concepts import Grounding
from ..text import words as split_words
from .describe import NUMBER_WORDS, REL_WORDS
from .scene import RELATIONS

DIGITS = {w: str(n) for n, w in enumerate(NUMBER_WORDS) if n}  # "two" -> "2", as count concepts write it
SPOKEN = {d: w for w, d in DIGITS.items()}                       # "2" -> "two", as sentences say it
RELATION_PHRASES = {tuple(r.split()) for r in RELATIONS}
# Where a sentence commits to a thing: a relation, at its first written word and its own ("to",
# "left" of ...), or a size or count ("big", "two"). Not "on" (also "on the grass"), nor colours
# (also "the green grass"): nothing after those need be a thing.
COMMITTING = {tuple(r.split()): {w.split()[0], r.split()[0]} for r, w in REL_WORDS.items() if r not in ("on", "in")}
COMMITTING_ATTRIBUTES = ("size", "count")
HOLD_BACK_FLOOR = 0.1  # hold back a committing word only if the words left hold this much probability
COPULAS = {("is",), ("are",)}  # "the duck is" ... a colour, size or count of the duck
ARTICLES = {"a", "an", "the"}


class WorldGrounding(Grounding):
    """Grounded decoding for the world (`Sampling(ground=p)` on a model whose concepts the world
    labelled): which words a row may not write next, by what the concept head sees in the row's
    pictures. Why: most false claims of a small model name something its own encoder had rated
    absent (docs/evaluation.md#grounded-decoding).

    Four rules, by the head's probability against `threshold`:
    - anywhere (the core's rule): a word the head finds in no patch: a one-word concept (a kind, a
      caption word), or the value of an attribute concept ("sunny" with no patch "weather sunny");
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
    under build_vocab's min_count) is taken as absent."""

    def __init__(self, probs: list[torch.Tensor], concepts: list[str], tokenizer, threshold: float, vocab_size: int,
                 context: list[str] | None = None):
        super().__init__(probs, concepts, tokenizer, threshold, vocab_size, context)
        self.forms = {f: c for c in self.words for f in (c, c + "s", c + "es")}  # "ducks" -> "duck"
        committing = dict(COMMITTING)  # ("left", "of"): {"to", "left"}; ("big",): {"big"}; ("2",): {"two"}
        for lead in COMMITTING_ATTRIBUTES:
            for (value,) in self.attributes.get(lead, {}).values():
                committing[(value,)] = {self.spoken(value)}
        self.committing = set(committing)
        self.starts = defaultdict(list)  # token id of " to" -> [("left", "of"), ("right", "of")]
        for lead, written in committing.items():
            for word in written:
                if lead in self.phrases and len(ids := tokenizer.encode(" " + word)) == 1:
                    self.starts[ids[0]].append(lead)

    def spoken(self, value: str) -> str:
        """Count concepts hold digits ("count 2"); sentences say "two"."""
        return SPOKEN.get(value, value)

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
        words = [DIGITS.get(w, w) for w in split_words(sentence, digits=True)]
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
        banned = super().__call__(new, logits)
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
