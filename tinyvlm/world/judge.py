"""The NanoVLMs paper's rubric (grammar, consistency, creativity, meaningfulness, plot; 0-10 each)
computed offline from what the picture-book world can measure, instead of asked of GPT-4o.

The paper's judge reads a story and gives five marks. Here each mark is a formula over figures the
world's checker knows exactly (which claims are true, which sentences have a template's shape, which
facts of the scene were said), so the same text always gets the same marks, and every mark can be
traced back to the claims and sentences behind it. docs/evaluation.md gives the formulas.

Claim measures count only the model's own claims: in the paper's completion protocol the first words
(`prefix`) were given, so claims already in the prefix are the prompt's, not the model's. Text
measures (grammar, plot, repetition, distinct-2, novelty) read the whole text, as a reader would.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import TinyVLMError
from ..eval.memorisation import memorisation
from ..eval.rubric import RUBRIC
from ..text import words
from .checker import NOUNS, REGIONS, SCENE_WORDS, Claim, grammatical, parse_claims, split_sentences, verify
from .scene import Scene
POINTERS = {"it", "they", "them", "its", "their", "this", "here", "too", "again"}  # words that point back
CONNECTIVES = {"then", "and", "so", "now", "soon", "later", "after", "next", "when"}  # and "one day"
EXCLUSIVE = ("time", "weather")  # scene facts with one value per picture (place has many true words)


@dataclass
class GroundedScore:
    """The five marks (0-10) for one description and the figures they are made of."""
    grammar: float
    consistency: float
    creativity: float
    meaningfulness: float
    plot: float
    claims: list[tuple[str, str]] = field(default_factory=list)  # (claim, "true"|"false"|"unverifiable"), the model's
    precision: float | None = None  # true / (true + false) of the model's claims; None if none is verifiable
    recall: float = 0.0             # facts of the scene stated truly by the model / facts it could state
    n_claims: int = 0
    n_false: int = 0
    things_mentioned: int = 0       # kinds of thing the model says are there (CHAIR's denominator)
    things_hallucinated: int = 0    # ... that are not in the picture
    attribute: tuple[int, int] = (0, 0)  # (correct, verifiable) colour and size claims
    count: tuple[int, int] = (0, 0)
    relation: tuple[int, int] = (0, 0)
    repetition: float = 0.0         # fraction of word 3-grams that repeat an earlier one
    novelty: float | None = None    # 1 - ROUGE-L to the nearest training text


def score_description(text: str, scene: Scene | dict, reference: str | list[str], prefix: str = "",
                      nearest_rouge: float | None = None) -> GroundedScore:
    """Mark one description of `scene`. `text` is the whole text (prefix + the model's continuation);
    `reference` is a ground-truth description of the same style, or a list of its paraphrases (it sets
    how much a description should say: the least of them);
    `nearest_rouge` is the ROUGE-L to the nearest training text, if known."""
    references = [reference] if isinstance(reference, str) else list(reference) if isinstance(reference, (list, tuple)) else []
    if not references or not all(isinstance(r, str) for r in references):
        raise TinyVLMError("score_description: reference must be a string or a non-empty list of strings")
    if not isinstance(text, str) or not isinstance(prefix, str):
        raise TinyVLMError("score_description: text and prefix must be strings")
    if isinstance(scene, dict):
        scene = Scene.from_dict(scene)
    given = set(parse_claims(prefix))
    claims = [c for c in parse_claims(text) if c not in given]
    verdicts = verify(claims, scene)
    n_true, n_false = verdicts.count("true"), verdicts.count("false")
    precision = n_true / (n_true + n_false) if n_true + n_false else None
    p = precision or 0.0  # saying nothing checkable earns no credit

    contradiction = _contradicts(parse_claims(text), claims)
    consistency = 10 * p * (1 - contradiction)

    sentences = split_sentences(text)
    shapes = [grammatical(s) for s in sentences]
    repeated = _repeated_sentences(sentences)
    grammar = 10 * sum(shapes) / len(sentences) * (1 - sum(repeated) / len(sentences)) if sentences else 0.0

    facts = _facts(scene)
    to_state = facts - _stated(given, scene)
    stated = _stated(claims, scene) & to_state
    recall = len(stated) / len(to_state) if to_state else 1.0
    # with several paraphrases, saying as much as the least-saying one earns full marks
    ref_recall = min((len(_stated([c for c in parse_claims(r) if c not in given], scene) & to_state)
                      / len(to_state) if to_state else 1.0) for r in references)
    meaningfulness = 10 * (min(1.0, recall / ref_recall) if ref_recall else recall)

    toks = words(text)
    novelty = None if nearest_rouge is None else 1 - nearest_rouge
    d2 = distinct_n(toks, 2)
    # word salad is as novel and distinct as text gets: only well-formed sentences can be creative
    shaped = sum(shapes) / len(sentences) if sentences else 0.0
    creativity = 10 * p * shaped * (d2 if novelty is None else 0.5 * novelty + 0.5 * d2)

    connected, n_story = _plot(sentences, shapes, repeated)
    plot = 10 * connected * min(1.0, n_story / 3)

    def tally(kinds: tuple[str, ...]) -> tuple[int, int]:
        vs = [v for c, v in zip(claims, verdicts) if c.kind in kinds and v != "unverifiable"]
        return vs.count("true"), len(vs)

    things = [v for c, v in zip(claims, verdicts) if c.kind == "thing"]
    return GroundedScore(
        grammar=grammar, consistency=consistency, creativity=creativity, meaningfulness=meaningfulness, plot=plot,
        claims=[(str(c), v) for c, v in zip(claims, verdicts)], precision=precision, recall=recall,
        n_claims=len(claims), n_false=n_false, things_mentioned=len(things), things_hallucinated=things.count("false"),
        attribute=tally(("colour", "size")), count=tally(("count",)), relation=tally(("relation",)),
        repetition=repetition(toks), novelty=novelty)


def judge(records: list, texts: list[str], references: list, prefixes: list[str],
          training_texts: list[str] | None = None) -> dict:
    """The plug-in's "grounded" judge, as `tinyvlm eval` calls it: each record's scene and
    reference descriptions, the text written for it and the prefix it was given."""
    items = [{"id": str(i), "text": t, "scene": r.scene, "reference": ref, "prefix": p}
             for i, (r, t, ref, p) in enumerate(zip(records, texts, references, prefixes))]
    g = judge_grounded(items, training_texts or None)
    return {"rubric": g["mean"], "raw": g["raw"], "items": g["items"]}


def judge_grounded(items: list[dict], training_texts: list[str] | None = None) -> dict:
    """Mark many descriptions: items are {"id", "text", "scene", "reference", "prefix" (optional)}.

    Returns {"items": [{"id", **GroundedScore}], "mean": {dim: float}, "raw": {...}} where raw holds the
    measurable figures behind the marks, pooled over all items (see docs/evaluation.md)."""
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise TinyVLMError("judge_grounded: items must be a list of dicts")
    for k, it in enumerate(items):
        missing = [key for key in ("text", "scene", "reference") if key not in it]
        if missing:
            raise TinyVLMError(f"judge_grounded: item {it.get('id', k)!r} has no {', '.join(missing)}")
    nearest = [None] * len(items)
    if training_texts:  # one call for all items: memorisation shortlists candidates with a shared index
        nearest = [m["rouge_l"] for m in memorisation([it["text"] for it in items], list(training_texts))]
    scores = [score_description(it["text"], it["scene"], it["reference"], it.get("prefix", "") or "", r)
              for it, r in zip(items, nearest)]
    return {"items": [{"id": it.get("id", k), **asdict(s)} for k, (it, s) in enumerate(zip(items, scores))],
            "mean": {dim: _mean([getattr(s, dim) for s in scores]) for dim in RUBRIC},
            "raw": _raw(scores, [it["text"] for it in items])}


# ---------------------------------------------------------------- the figures

def repetition(toks: list[str]) -> float:
    """Fraction of word 3-grams that already occurred earlier in the same text (0 = no loops)."""
    grams = list(zip(toks, toks[1:], toks[2:]))
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def distinct_n(toks: list[str], n: int = 2) -> float:
    """Distinct word n-grams / n-grams in one text (Li et al. 2016's distinct-n); 0 for too short a text."""
    grams = list(zip(*(toks[k:] for k in range(n))))
    return len(set(grams)) / len(grams) if grams else 0.0


def _facts(scene: Scene) -> set[tuple[str, str]]:
    """What a full description says: each thing's kind and colour (and count if more than one),
    the place, the time and the weather."""
    out = {("place", ""), ("time", ""), ("weather", "")}
    for t in scene.things:
        out |= {("thing", t.kind), ("colour", t.kind)} | ({("count", t.kind)} if t.count > 1 else set())
    return out


def _stated(claims, scene: Scene) -> set[tuple[str, str]]:
    """The facts of `_facts` that these claims state truly. "sky" is true of every place, so it does
    not say where we are."""
    claims = list(claims)
    out = set()
    for c, v in zip(claims, verify(claims, scene)):
        if v != "true":
            continue
        if c.kind == "scene":
            if c.subject != "place" or c.value != "sky":
                out.add((c.subject, ""))
        elif c.kind in ("thing", "colour", "count"):
            out.add((c.kind, c.subject))
    return out & _facts(scene)


def _contradicts(all_claims: list[Claim], own: list[Claim]) -> int:
    """1 if the text gives two counts for one kind, or two times or weathers, and at least one of them
    is the model's (a prompt cannot be the model's fault)."""
    values: dict[tuple[str, str], set[str]] = {}
    for c in all_claims:
        if c.kind == "count" or (c.kind == "scene" and c.subject in EXCLUSIVE):
            values.setdefault((c.kind, c.subject), set()).add(c.value)
    own_keys = {(c.kind, c.subject) for c in own}
    return int(any(len(vs) > 1 and key in own_keys for key, vs in values.items()))


def _repeated_sentences(sentences: list[str]) -> list[bool]:
    seen, out = set(), []
    for s in sentences:
        key = tuple(words(s))
        out.append(key in seen)
        seen.add(key)
    return out


def _content(toks: list[str]) -> set[str]:
    """What a sentence talks about: thing kinds (plurals folded), and "setting" for any word of the
    place, time, weather or a region ("beach", "night", "raining", "sky", "water" ...). The setting is
    one topic: "The sky is gray." goes on from "One cloudy night, we go out on the sea."."""
    out = {NOUNS[w] for w in toks if w in NOUNS}
    if any(w in SCENE_WORDS or w in REGIONS for w in toks):
        out.add("setting")
    return out


def _links(toks: list[str], mentioned: set[str]) -> bool:
    """Whether a sentence ties itself to what came before: something already named, a pronoun or
    other word that points back ("this", "here", "too", "again"), or a connective at its start."""
    return (bool(_content(toks) & mentioned) or any(w in POINTERS for w in toks)
            or (bool(toks) and toks[0] in CONNECTIVES) or toks[:2] == ["one", "day"])


def _plot(sentences: list[str], shapes: list[bool], repeated: list[bool]) -> tuple[float, int]:
    """(connected, n): n counts the sentences that carry the story, connected is the fraction of them
    after the first that link to what came before. Only a sentence with a template's shape that is
    not a repeat can link: word salad that reuses a noun, or a loop, tells no story. A well-formed
    sentence that names nothing and points back at nothing ("Wow!", "I am happy.") neither links nor
    breaks the story, so it is left out of both."""
    mentioned: set[str] = set()
    story = []  # for each sentence that carries the story: does it link (the first: is it a sentence)
    for s, ok, again in zip(sentences, shapes, repeated):
        toks = words(s)
        content = _content(toks)
        links = _links(toks, mentioned)
        if ok and not again and not content and not links:
            continue
        story.append(ok and not again and (not story or links))
        mentioned |= content
    if len(story) < 2:
        return (float(story[0]) if story else 0.0), len(story)
    return sum(story[1:]) / (len(story) - 1), len(story)


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _ratio(pairs: list[tuple[int, int]]) -> float | None:
    num, den = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return num / den if den else None


def _raw(scores: list[GroundedScore], texts: list[str]) -> dict:
    verdicts = [[v for _, v in s.claims] for s in scores]
    verifiable = [(vs.count("true"), vs.count("true") + vs.count("false")) for vs in verdicts]
    return {
        "claim_precision": _ratio(verifiable),
        "claim_recall": _mean([s.recall for s in scores]),
        "hallucination_per_thing": _ratio([(s.things_hallucinated, s.things_mentioned) for s in scores]),
        "hallucination_per_description": _mean([float(s.things_hallucinated > 0) for s in scores]),
        "attribute_accuracy": _ratio([s.attribute for s in scores]),
        "count_accuracy": _ratio([s.count for s in scores]),
        "relation_accuracy": _ratio([s.relation for s in scores]),
        "repetition_rate": _mean([s.repetition for s in scores]),
        "novelty": _mean([s.novelty for s in scores]),
        "distinct_outputs": len(set(texts)) / len(texts) if texts else None,
    }
