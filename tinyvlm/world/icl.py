"""In-context learning episodes from the picture-book world, in VL-ICL Bench's image-to-text
families (Zong et al., ICLR 2025):

- binding: 2-way fast binding of invented names. Two kinds of thing are bound to two nonsense
  words drawn fresh per episode ("What is this?" -> "dax"); the query shows another picture of one
  of the kinds. Words are syllable strings; a hash splits them, so the words of held-out episodes
  never appear in training ones.
- operator: a picture of "a ? b" (seven-segment digits in the world's colours); the answer is the
  result of the operator (+, -, x) the shots imply.
- count: "colour: red" (or kind, or size) -> how many things in the picture have it.
- matching: do two pictures share the relation the shots show (same kind, or same colour)? yes/no.

Every episode comes from its own generator, seeded by (seed, index); any number of shots.
"""
from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.episodes import Episode, Shot
from ..data.records import write_jsonl
from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..files import atomic_dir, owned_names
from .render import GROUND_RGB, INK, RGB, SKY, render
from .scene import KINDS, SIZES, Scene, sample_scene

FAMILIES = ("binding", "operator", "count", "matching")
QUESTIONS = {"binding": "What is this?", "operator": "What is the answer?", "matching": "Do they match?"}
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
EPISODES_FILE, INFO_FILE = "episodes.jsonl", "icl.json"
OWNED = owned_names((EPISODES_FILE, INFO_FILE, "*.png"))  # pictures lie flat beside the episodes


# --- invented names --------------------------------------------------------------------------
def held_out_word(word: str) -> bool:
    """The split of nonsense words: a fifth of them (by a hash, so any machine agrees) are kept
    for held-out episodes and never drawn for training ones."""
    return zlib.crc32(word.encode()) % 5 == 0


def nonsense_word(rng: random.Random, held_out: bool) -> str:
    """A pronounceable non-word of 2-3 consonant-vowel syllables (70^2 + 70^3 of them), from the
    held-out fifth or from the rest."""
    while True:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 3))))
        if held_out_word(word) == held_out:
            return word


# --- pictures ----------------------------------------------------------------------------------
SEGMENTS = {  # seven-segment digits: which of a b c d e f g are lit
    0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg",
    9: "abcdfg"}


def _digit(d: ImageDraw.ImageDraw, n: int, x: float, y: float, w: float, h: float, t: float, fill) -> None:
    """Digit n with its top-left corner at (x, y), w wide and h high, strokes t thick."""
    m = h / 2
    bars = {"a": (x, y, x + w, y + t), "g": (x, y + m - t / 2, x + w, y + m + t / 2), "d": (x, y + h - t, x + w, y + h),
            "f": (x, y, x + t, y + m), "b": (x + w - t, y, x + w, y + m),
            "e": (x, y + m, x + t, y + h), "c": (x + w - t, y + m, x + w, y + h)}
    for s in SEGMENTS[n]:
        d.rectangle(bars[s], fill=fill)


def draw_sum(a: int, b: int, size: int, rng: random.Random) -> Image.Image:
    """'a ? b' in the world's flat style: digits in a world colour on a sky or ground colour."""
    ss = 4
    S = size * ss
    bg = rng.choice(list(SKY.values()) + list(GROUND_RGB.values()))
    fg = rng.choice([c for c in RGB.values() if sum(abs(u - v) for u, v in zip(c, bg)) > 200] or [INK])
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    w, h, t = S * 0.2, S * 0.36, S * 0.05
    y = S * rng.uniform(0.2, 0.44)
    x0 = S * rng.uniform(0.04, 0.1)
    _digit(d, a, x0, y, w, h, t, fg)
    qx = x0 + w + S * 0.08  # the unknown operator: a question mark in ink
    d.arc((qx, y, qx + w * 0.8, y + h * 0.5), 180, 90, fill=INK, width=int(t))
    d.rectangle((qx + w * 0.4 - t / 2, y + h * 0.5, qx + w * 0.4 + t / 2, y + h * 0.75), fill=INK)
    d.rectangle((qx + w * 0.4 - t / 2, y + h * 0.85, qx + w * 0.4 + t / 2, y + h), fill=INK)
    _digit(d, b, qx + w * 0.8 + S * 0.08, y, w, h, t, fg)
    return img.reduce(ss)


class Pictures:
    """The pictures episodes draw from, written once beside the episodes: single things (binding,
    matching), whole scenes (count) and sums (operator), flat in the folder."""

    def __init__(self, out: Path, size: int, seed: int, per_kind: int, scenes: int, drawings: int = 2):
        self.out, self.size = out, size
        rng = random.Random(f"tinyvlm-icl-pictures:{seed}")
        self.single: dict[str, list[tuple[str, dict]]] = {k: [] for k in KINDS}
        for tries in range(per_kind * len(KINDS) * 60):
            if all(len(v) >= per_kind for v in self.single.values()):
                break
            scene = sample_scene(rng, max_things=1)
            t = scene.things[0]
            if t.count > 1 or len(self.single[t.kind]) >= per_kind:
                continue
            path = f"one-{sum(map(len, self.single.values())):05d}.png"
            render(scene, size).save(out / path)
            self.single[t.kind].append((path, {"kind": t.kind, "colour": t.colour, "size": t.size}))
        self.single = {k: v for k, v in self.single.items() if len(v) >= 2}
        self.scenes: list[tuple[str, Scene]] = []
        for i in range(scenes):
            scene = sample_scene(rng)
            path = f"scene-{i:05d}.png"
            render(scene, size).save(out / path)
            self.scenes.append((path, scene))
        self.sums: dict[tuple[int, int], list[str]] = {}
        for a in range(10):
            for b in range(a + 1):  # a >= b: a - b stays a whole number a child knows
                paths = []
                for v in range(drawings):
                    path = f"sum-{a}{b}-{v}.png"
                    draw_sum(a, b, size, rng).save(out / path)
                    paths.append(path)
                self.sums[a, b] = paths


# --- the four families -------------------------------------------------------------------------
def _balanced(rng: random.Random, k: int) -> list[int]:
    """k labels of a 2-way episode: each pair of shots shows both, so any even prefix is balanced."""
    out = []
    while len(out) < k:
        pair = [0, 1]
        rng.shuffle(pair)
        out += pair
    return out[:k]


def binding(rng: random.Random, pics: Pictures, k: int, held_out: bool, ease: float = 0.0) -> Episode:
    """`ease`: the chance that every shot of a kind shows the same picture, so that finding the shot
    to copy from is matching a picture, not a kind: a first lesson in copying from the context."""
    kinds = rng.sample(sorted(k_ for k_, v in pics.single.items() if len(v) >= k + 1), 2)
    words = [nonsense_word(rng, held_out)]
    while len(words) < 2:
        w = nonsense_word(rng, held_out)
        if w != words[0]:
            words.append(w)
    labels, q = _balanced(rng, k), rng.randrange(2)
    drawn = {c: rng.sample(pics.single[kinds[c]], min(len(pics.single[kinds[c]]), k + 1)) for c in (0, 1)}
    if rng.random() < ease:
        drawn = {c: drawn[c][:1] * (k + 1) for c in (0, 1)}
    shots = [Shot((drawn[c].pop()[0],), QUESTIONS["binding"], words[c]) for c in labels]
    query = Shot((drawn[q].pop()[0],), QUESTIONS["binding"], words[q])
    learn = tuple(c in labels[:i] for i, c in enumerate(labels + [q]))
    return Episode("binding", tuple(shots), query, learn, {"kinds": kinds, "choices": words})


def operator(rng: random.Random, pics: Pictures, k: int) -> Episode:
    op = rng.choice(sorted(OPERATORS))

    def shot() -> Shot:
        a, b = rng.choice(sorted(pics.sums))
        return Shot((rng.choice(pics.sums[a, b]),), QUESTIONS["operator"], str(OPERATORS[op](a, b)))

    shots = [shot() for _ in range(k)]
    return Episode("operator", tuple(shots), shot(), tuple(i > 0 for i in range(k + 1)), {"operator": op})


def _count_question(rng: random.Random, scene: Scene, attribute: str) -> tuple[str, int]:
    present = [getattr(t, attribute) for t in scene.things]
    values = {"colour": sorted(RGB), "kind": sorted(KINDS), "size": list(SIZES)}[attribute]
    value = rng.choice(present) if present and rng.random() < 0.8 else rng.choice(values)
    n = sum(t.count for t in scene.things if getattr(t, attribute) == value)
    return f"{attribute}: {value}", n


def count(rng: random.Random, pics: Pictures, k: int) -> Episode:
    attribute = rng.choice(("colour", "kind", "size"))

    def shot() -> Shot:
        path, scene = rng.choice(pics.scenes)
        question, n = _count_question(rng, scene, attribute)
        return Shot((path,), question, str(n))

    shots = [shot() for _ in range(k)]
    return Episode("count", tuple(shots), shot(), tuple(i > 0 for i in range(k + 1)), {"attribute": attribute})


def matching(rng: random.Random, pics: Pictures, k: int) -> Episode:
    relation, other = rng.sample(("kind", "colour"), 2)
    flat = [p for v in pics.single.values() for p in v]

    def shot(answer: bool) -> Shot:
        # the other relation is drawn apart from the answer, so one pair alone never tells which is asked
        want_other = rng.random() < 0.5
        a = rng.choice(flat)
        for _ in range(200):
            b = rng.choice(flat)
            if b is not a and (a[1][relation] == b[1][relation]) == answer and (a[1][other] == b[1][other]) == want_other:
                break
        else:
            b = next((b for b in flat if b is not a and (a[1][relation] == b[1][relation]) == answer), a)
        return Shot((a[0], b[0]), QUESTIONS["matching"], "yes" if a[1][relation] == b[1][relation] else "no")

    labels = _balanced(rng, k)
    shots = [shot(bool(c)) for c in labels]
    return Episode("matching", tuple(shots), shot(rng.random() < 0.5), tuple(i > 0 for i in range(k + 1)),
                   {"relation": relation})


def make_episode(family: str, rng: random.Random, pics: Pictures, k: int, held_out: bool, ease: float = 0.0) -> Episode:
    if family == "binding":
        return binding(rng, pics, k, held_out, ease)
    return {"operator": operator, "count": count, "matching": matching}[family](rng, pics, k)


def write_episodes(out_dir: str, n: int, seed: int = 0, shots: tuple[int, int] = (0, 8),
                   families: tuple[str, ...] = FAMILIES, held_out: bool = False, size: int = 64,
                   per_kind: int = 40, scenes: int = 400, ease: float = 0.0, drawings: int = 2) -> Path:
    """n episodes (families in turn, each with lo..hi support shots drawn from its own generator)
    and their pictures into out_dir: *.png, episodes.jsonl, icl.json. `held_out` draws invented
    names from the held-out word list (for evaluation); `ease`, the share of binding episodes that
    show one picture a kind (binding's docstring); `drawings`, the pictures of each digit pair the
    operator episodes draw from (an encoder trained through few drawings can learn them by heart
    rather than learn to read digits: docs/icl.md). Returns the episodes file."""
    check_range("n", n, 1, MAX_COUNT, integer=True, note="episodes")
    check_seed("seed", seed)
    check_range("size", size, 32, 512, integer=True, note="image size, in pixels")
    lo, hi = shots
    check_range("shots", lo, 0, 64, integer=True, note="the fewest support shots")
    check_range("shots", hi, lo, 64, integer=True, note="the most support shots, >= the fewest")
    check_range("per_kind", per_kind, hi + 2, 10_000, integer=True, note="pictures of each kind: shots + 2 at least")
    check_range("scenes", scenes, 1, 1_000_000, integer=True)
    check_range("drawings", drawings, 1, 1_000, integer=True, note="pictures of each digit pair")
    check_range("ease", ease, 0, 1, note="a share of the binding episodes")
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise TinyVLMError(f"unknown episode families {bad}: choose from {', '.join(FAMILIES)}")
    with atomic_dir(Path(out_dir), OWNED, "tinyvlm in-context episodes") as out:
        pics = Pictures(out, size, seed, per_kind, scenes, drawings)
        records = []
        for i in range(n):
            rng = random.Random(f"tinyvlm-icl:{seed}:{i}")
            family = families[i % len(families)]
            records.append(make_episode(family, rng, pics, rng.randint(lo, hi), held_out, ease).to_record())
        write_jsonl(records, out / EPISODES_FILE)
        info = {"n": n, "seed": seed, "shots": [lo, hi], "families": list(families), "held_out": held_out,
                "size": size, "per_kind": per_kind, "scenes": scenes, "ease": ease, "drawings": drawings}
        (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return Path(out_dir) / EPISODES_FILE
