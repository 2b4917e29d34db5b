"""In-context learning episodes: k support examples (picture(s), question, answer) and a query.

An episode is stored as an ordinary conversation record (records.py), one exchange a shot, so the
one tokenizer path, collate function and training loop read it like any other conversation:

    user: <image> question_1    assistant: answer_1      (support, k times)
    ...
    user: <image> question_q    assistant: answer_q      (the query)

`extra["icl"]` says what the turns cannot: the family, and which answers carry a training loss
(`learn`, one flag an assistant turn). Only answers the earlier shots determine are learned: the
first shot of an invented name cannot be predicted, so a loss on it teaches guessing, not reading
(VL-ICL Bench, Zong et al., ICLR 2025, formats shots the same way: picture, question, answer).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from ..errors import TinyVLMError
from ..tokenizer import IMAGE_SLOT
from .records import Record

ICL = "icl"  # the record field (in extra) that marks an episode


@dataclass(frozen=True)
class Shot:
    """One (picture(s), question, answer); the question holds no <image> slot (one per picture is
    put first when the shot is formatted)."""
    images: tuple[str, ...]
    question: str
    answer: str

    def user_turn(self) -> str:
        return " ".join([IMAGE_SLOT] * len(self.images) + [self.question])


@dataclass(frozen=True)
class Episode:
    family: str
    support: tuple[Shot, ...]
    query: Shot
    learn: tuple[bool, ...] | None = None  # one per shot, the query last: does its answer carry a loss?
    meta: dict = field(default_factory=dict, compare=False)

    def take(self, k: int) -> "Episode":
        """The same query after only the first k support shots."""
        if not 0 <= k <= len(self.support):
            raise TinyVLMError(f"an episode with {len(self.support)} support shots cannot give {k}")
        return replace(self, support=self.support[:k], learn=None)

    def shuffled(self, rng: random.Random) -> "Episode":
        """The support answers permuted among the support shots (the baseline that shows whether a
        model reads its shots: its accuracy must fall to chance). A derangement where the answers
        allow one, so that no shot keeps its own answer by chance alone."""
        answers = [s.answer for s in self.support]
        order = list(range(len(answers)))
        for _ in range(100):
            rng.shuffle(order)
            if all(answers[i] != answers[j] for j, i in enumerate(order)) or len(set(answers)) < 2:
                break
        support = tuple(replace(s, answer=answers[i]) for s, i in zip(self.support, order))
        return replace(self, support=support)

    def turns(self) -> list[tuple[str, str]]:
        """The support shots and the query, as (role, text) turns ending on the query's answer."""
        out = []
        for s in (*self.support, self.query):
            out += [("user", s.user_turn()), ("assistant", s.answer)]
        return out

    def images(self) -> list[str]:
        return [p for s in (*self.support, self.query) for p in s.images]

    def to_record(self) -> Record:
        learn = list(self.learn) if self.learn is not None else [True] * (len(self.support) + 1)
        info = {"family": self.family, "shots": len(self.support), "learn": learn, **self.meta}
        return Record(images=self.images(), text=self.query.answer, answer=self.query.answer, turns=self.turns(),
                      extra={ICL: info})

    @classmethod
    def from_record(cls, record: Record) -> "Episode":
        """An episode back from its record (raises TinyVLMError when the record is not one)."""
        info = record.extra.get(ICL)
        if not isinstance(info, dict) or not record.turns:
            raise TinyVLMError("not an in-context episode: a record needs 'turns' and an 'icl' field")
        turns, images, shots = record.turns, list(record.images), []
        for j in range(0, len(turns), 2):
            (_, user), (_, answer) = turns[j], turns[j + 1]
            n = user.count(IMAGE_SLOT)
            question = " ".join(user.replace(IMAGE_SLOT, " ").split())
            if n > len(images):
                raise TinyVLMError("an episode's turns hold more pictures than its record names")
            shots.append(Shot(tuple(images[:n]), question, answer))
            images = images[n:]
        learn = info.get("learn")
        meta = {k: v for k, v in info.items() if k not in ("family", "shots", "learn")}
        return cls(str(info.get("family", "episodes")), tuple(shots[:-1]), shots[-1],
                   tuple(bool(x) for x in learn) if isinstance(learn, list) else None, meta)


def learn_flags(record: Record) -> tuple[bool, ...] | None:
    """Which assistant turns of a record carry a loss (None: all of them)."""
    info = record.extra.get(ICL)
    if isinstance(info, dict) and isinstance(info.get("learn"), list):
        return tuple(bool(x) for x in info["learn"])
    return None


def is_episode(record: Record) -> bool:
    return isinstance(record.extra.get(ICL), dict)
