"""The describer run backwards: find checkable claims in any text and check them against a scene.

Model output is messy (broken sentences, repeats, unknown words, no full stops), so the parser never
relies on whole sentences: it finds noun phrases ("three red balls"), what is said of them ("is big"),
relation words between two of them ("next to"), and scene words ("night", "rainy", "beach").
A claim about a thing that is not in the picture is "unverifiable" except the claim that it is there,
so swapping one word of a true description makes exactly one claim false.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .describe import NUMBER_WORDS, abstract, grammar, words
from .scene import COLOURS, GROUND, KINDS, PLACE_WORDS, SIZES, Scene, relation_holds

NOUNS = {**{k: k for k in KINDS}, **{v.plural: k for k, v in KINDS.items()}}
NUMBERS = {w: n for n, w in enumerate(NUMBER_WORDS) if n}
MODIFIERS = set(COLOURS) | set(SIZES) | set(NUMBERS)
DETERMINERS = {"a", "an", "the", "my", "this", "that", "some", "these", "those", "its", "their"}
BE = {"is", "are", "was", "were"}
REGIONS = {"sky", "water", "sea", *GROUND.values()}
REL_PHRASES = [(("to", "the", "left", "of"), "left of"), (("on", "the", "left", "of"), "left of"), (("left", "of"), "left of"),
               (("to", "the", "right", "of"), "right of"), (("on", "the", "right", "of"), "right of"),
               (("right", "of"), "right of"), (("on", "top", "of"), "on"), (("next", "to"), "next to"),
               (("beside",), "next to"), (("above",), "above"), (("over",), "above"), (("below",), "below"),
               (("under",), "below"), (("on",), "on"), (("in",), "in")]
SCENE_WORDS = {"day": ("time", "day"), "night": ("time", "night"), "dark": ("time", "night"),
               **{w: ("weather", w) for w in ("sunny", "cloudy", "rainy", "snowy", "clear")},
               "rain": ("weather", "rainy"), "raining": ("weather", "rainy"), "snowing": ("weather", "snowy"),
               **{w: ("place", w) for w in set().union(*PLACE_WORDS.values())}}


@dataclass(frozen=True)
class Claim:
    """One checkable statement. thing/colour/size/count: `subject` is a kind, `value` the attribute;
    relation: `subject value object` ("ball", "next to", "tree" or a region like "grass");
    scene: `subject` is time, weather or place."""
    kind: str
    subject: str
    value: str = ""
    object: str = ""

    def __str__(self) -> str:
        if self.kind == "thing":
            return f"there is a {self.subject}"
        if self.kind == "count":
            return f"there are {self.value} {self.subject}(s)"
        if self.kind == "relation":
            return f"the {self.subject} is {self.value} the {self.object}"
        if self.kind == "scene":
            return f"{self.subject} is {self.value}"
        return f"the {self.subject} is {self.value}"


def split_sentences(text: str) -> list[str]:
    if not isinstance(text, str):
        return []
    return [s.strip() for s in re.findall(r"[^.!?\n]+[.!?]*", text) if re.search(r"[A-Za-z]", s)]


def parse_claims(text: str) -> list[Claim]:
    """All claims in the text, each once, in order. Never raises."""
    claims, antecedent = [], None
    for sentence in split_sentences(text):
        found, antecedent = _parse(words(sentence), antecedent)
        claims += found
    return list(dict.fromkeys(claims))


def _parse(toks: list[str], antecedent: str | None) -> tuple[list[Claim], str | None]:
    claims, nps, used = [], [], set()  # nps: (end index, kind); used: region words already read
    for k, w in enumerate(toks):
        kind = NOUNS.get(w)
        if kind is None:
            if w in ("it", "they") and (antecedent or nps):
                claims += _predicate(toks, k, nps[0][1] if nps else antecedent)
            continue
        j = k
        while j > 0 and toks[j - 1] in MODIFIERS:
            j -= 1
        if j > 0 and toks[j - 1] in ("no", "not"):
            continue
        nps.append((k, kind))
        claims.append(Claim("thing", kind))
        for m in toks[j:k]:
            claims.append(_attribute(kind, m))
        claims += _predicate(toks, k, kind)
    p = 0
    while p < len(toks):
        phrase, rel = next(((ph, r) for ph, r in REL_PHRASES if tuple(toks[p:p + len(ph)]) == ph), ((), ""))
        if not rel:
            p += 1
            continue
        p += len(phrase)
        subject = next((kind for end, kind in reversed(nps) if end < p - len(phrase)), None)
        q = p
        while q < len(toks) and (toks[q] in DETERMINERS or toks[q] in MODIFIERS):
            q += 1
        obj = toks[q] if q < len(toks) else ""
        if subject and (obj in NOUNS or obj in REGIONS):
            claims.append(Claim("relation", subject, rel, NOUNS.get(obj, obj)))
            used.add(q)
    for k, w in enumerate(toks):
        if w in SCENE_WORDS and k not in used:
            claims.append(Claim("scene", *SCENE_WORDS[w]))
    return claims, nps[0][1] if nps else antecedent


def _attribute(kind: str, word: str) -> Claim:
    if word in COLOURS:
        return Claim("colour", kind, word)
    if word in SIZES:
        return Claim("size", kind, word)
    return Claim("count", kind, str(NUMBERS[word]))


def _predicate(toks: list[str], k: int, kind: str) -> list[Claim]:
    """Claims from "... is big and red" right after the thing (or "it") at position k."""
    if k + 1 >= len(toks) or toks[k + 1] not in BE:
        return []
    out, q = [], k + 2
    while q < len(toks) and (toks[q] in COLOURS or toks[q] in SIZES or toks[q] in ("and", "very")):
        if toks[q] in COLOURS or toks[q] in SIZES:
            out.append(_attribute(kind, toks[q]))
        q += 1
    return out


def verify(claims: list[Claim], scene: Scene | dict) -> list[str]:
    """"true", "false" or "unverifiable" for each claim."""
    if isinstance(scene, dict):
        scene = Scene.from_dict(scene)
    out = []
    for c in claims:
        try:
            truth = _truth(c, scene)
        except Exception:  # a malformed claim is not worth a crash in the middle of an evaluation
            truth = None
        out.append("unverifiable" if truth is None else "true" if truth else "false")
    return out


def _truth(c: Claim, scene: Scene) -> bool | None:
    if c.kind == "scene":
        if c.subject == "place":
            return c.value in PLACE_WORDS[scene.place]
        return getattr(scene, c.subject) == c.value
    t = scene.find(c.subject)
    if c.kind == "thing":
        return t is not None
    if t is None:
        return None
    if c.kind in ("colour", "size"):
        return getattr(t, c.kind) == c.value
    if c.kind == "count":
        return t.count == int(c.value)
    if c.kind != "relation":
        return None
    if c.object in KINDS:
        o = scene.find(c.object)
        return None if o is None or c.value == "in" else relation_holds(scene, t, c.value, o)
    if c.value not in ("on", "in"):  # "above the grass" is not something the world decides
        return None
    if c.object in ("water", "sea"):
        return t.zone in ("water", "underwater")
    if c.object == "sky":
        return t.zone == "sky"
    return t.zone == "ground" and scene.ground == c.object


def grammatical(sentence: str) -> bool:
    """True iff the sentence has the shape of one the world's templates make (for any things and colours)."""
    if not isinstance(sentence, str) or not words(sentence):
        return False
    return _matches(abstract(words(sentence)))


_cache: dict[str, bool] = {}


def _matches(shape: str) -> bool:
    if shape not in _cache:
        if len(_cache) > 100_000:
            _cache.clear()
        _cache[shape] = grammar().fullmatch(shape) is not None
    return _cache[shape]
