"""Words for a scene: short and long descriptions, questions, and hard negatives.

Every sentence comes from a template with slots ({a} = "a big red ball", {be} = "is"/"are" ...).
The templates are also the world's grammar: `grammar()` turns them into one regular expression over
abstracted words (colour -> C, thing -> T ...), which the checker uses to judge any sentence.
A negative is made by changing one slot of one sentence, so exactly one claim becomes false.
"""
from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, replace

from ..text import LENGTHS, words  # noqa: F401  (words: how lengths and vocabulary are counted; re-exported)
from .scene import COLOURS, GROUND, KINDS, PLACES, SIZES, Scene, Thing, relation_holds

# The world's one number-word table: NUMBER_WORDS[n] says n. The checker and grounding read it backwards.
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
REL_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below",
             "next to": "next to", "on": "on"}
GROUND_COLOUR = {"grass": "green", "sand": "yellow", "snow": "white", "floor": "brown", "water": "blue"}

# What each kind does, as (one, many). Unknown kinds fall back to "any".
ACTS = {
    "dog": [("runs", "run"), ("plays", "play"), ("wags its tail", "wag their tails"), ("is happy", "are happy")],
    "cat": [("sits still", "sit still"), ("looks at me", "look at me"), ("wants to play", "want to play")],
    "bird": [("sings", "sing"), ("is happy", "are happy")],
    "fish": [("swims", "swim"), ("swims fast", "swim fast")],
    "duck": [("says quack", "say quack"), ("is happy", "are happy")],
    "boat": [("floats", "float"), ("goes slowly", "go slowly")],
    "kite": [("flies high", "fly high"), ("goes up and up", "go up and up")],
    "balloon": [("floats up", "float up"), ("goes up and up", "go up and up")],
    "sun": [("shines", "shine"), ("is warm", "are warm")],
    "moon": [("shines", "shine"), ("is bright", "are bright")],
    "star": [("shines", "shine"), ("twinkles", "twinkle")],
    "cloud": [("moves slowly", "move slowly")],
    "car": [("is ready to go", "are ready to go"), ("waits", "wait")],
    "house": [("has a door", "have doors"), ("looks cosy", "look cosy")],
    "tree": [("is tall", "are tall"), ("has many leaves", "have many leaves")],
    "flower": [("smells nice", "smell nice"), ("is pretty", "are pretty")],
    "ball": [("is round", "are round"), ("is fun to play with", "are fun to play with")],
    "apple": [("looks good to eat", "look good to eat")],
    "hat": [("looks warm", "look warm")],
    "chair": [("looks soft", "look soft")],
    "any": [("looks nice", "look nice"), ("is pretty", "are pretty")],
}

# Sentence templates, by role. {a}/{the}/{the_bare}/{be}/{it}/{act}/{adj}/{where} speak of the
# sentence's thing, {a2}/{the2} of a second thing, {rel} of how they stand.
INTRO = ["I see {a}.", "I can see {a}.", "There {be} {a}.", "Look at {a}!", "Here {be} {a}."]
INTRO_WHERE = ["I see {a} {where}.", "I can see {a} {where}.", "There {be} {a} {where}.", "{a} {be} {where}."]
INTRO_REL = ["I see {a} {rel} {a2}.", "There {be} {a} {rel} {a2}.", "{a} {be} {rel} {a2}.",
             "I see {a} {rel} {the2}.", "There {be} {a} {rel} {the2}.", "{a} {be} {rel} {the2}."]
INTRO_SKY = ["{the} {be} out.", "{the} {be} up in the sky."]
INTRO_PAIR = ["I see {a} and {a2}.", "There {be} {a} and {a2}."]
WHERE = ["{the} {be} {where}."]
REL = ["{the} {be} {rel} {the2}."]
ADJ = ["{the_bare} {be} {adj}.", "{it} {be} {adj}."]
ACT = ["{the} {act}.", "{it} {act}."]
COUNT = ["I can count {a}."]
FILLERS = ["Wow!", "Look!", "Yay!", "How nice!", "The end.", "I like it.", "This is fun.", "I am happy.",
           "I like this picture.", "It is so pretty.", "Can you see it?", "I want to stay.",
           "I want to play too.", "It is a happy picture.", "Everything looks so nice.",
           "I like all the colours here.", "I want to come back here again.", "Do you like it too?",
           "My friends like it too.", "We have so much fun here.", "I tell my mum all about it."]
CLOSERS = {"day": ["What a nice day!", "It is a good day to play."],
           "night": ["Good night!", "It is time to sleep.", "What a nice night!"]}
PLACE_LINES = {
    "park": ["We are in the park.", "This is a park.", "There is green grass here.", "I see green grass."],
    "beach": ["We are at the beach.", "This is a beach.", "I see sand and the sea.", "There is sand and water here."],
    "sea": ["We are out on the sea.", "This is the sea.", "I see water all around.", "There is water all around."],
    "snow": ["We are out in the snow.", "There is snow all around.", "I see white snow."],
    "room": ["We are in my room.", "This is my room.", "We are inside.", "I see the floor of my room."],
}
AT_PLACE = {"park": "in the park", "beach": "at the beach", "sea": "on the sea", "snow": "in the snow",
            "room": "in my room"}
GO_PLACE = {"park": "go to the park", "beach": "go to the beach", "sea": "go out on the sea",
            "snow": "play in the snow", "room": "play in my room"}
WEATHER_LINES = {"sunny": ["It is sunny.", "The sky is blue."], "cloudy": ["It is cloudy.", "The sky is gray."],
                 "rainy": ["It is raining.", "Rain is falling."], "snowy": ["It is snowing.", "Snow is falling."],
                 "clear": ["The sky is dark."]}
OPENERS = ["One {weather} {time}, we {go}.", "It is a {weather} {time}, and we {go}."]
TIME_LINES = ["It is {time}.", "It is a {weather} {time}.", "It is {time} {at_place}.", "It is a {weather} {time} {at_place}."]


def plural(kind: str) -> str:
    return KINDS[kind].plural if kind in KINDS else kind + "s"


@dataclass(frozen=True)
class Mention:
    """How a sentence names a thing: colour and size are said only when set."""
    kind: str
    count: int = 1
    colour: str | None = None
    size: str | None = None

    def words(self, det: str, adjectives: bool = True) -> str:
        noun = self.kind if self.count == 1 else plural(self.kind)
        adj = [w for w in (self.size, self.colour) if w and adjectives]
        if det == "a":
            det = ("an" if (adj or [noun])[0][0] in "aeiou" else "a") if self.count == 1 else NUMBER_WORDS[self.count]
        return " ".join([det, *adj, noun])


@dataclass(frozen=True)
class Sentence:
    template: str
    m: Mention | None = None
    m2: Mention | None = None
    rel: str = ""
    where: str = ""
    act: tuple[str, str] = ("", "")

    @functools.cached_property
    def text(self) -> str:
        one = self.m is None or self.m.count == 1
        adj = self.m and " and ".join(w for w in (self.m.size, self.m.colour) if w)
        slots = {"a": lambda: self.m.words("a"), "the": lambda: self.m.words("the"),
                 "the_bare": lambda: self.m.words("the", False), "be": lambda: "is" if one else "are",
                 "it": lambda: "it" if one else "they", "act": lambda: self.act[0 if one else 1],
                 "adj": lambda: adj, "where": lambda: self.where, "rel": lambda: REL_WORDS[self.rel],
                 "a2": lambda: self.m2.words("a"), "the2": lambda: self.m2.words("the")}
        s = re.sub(r"\{(\w+)\}", lambda g: slots[g[1]](), self.template)
        return s[0].upper() + s[1:]

    @functools.cached_property
    def n_words(self) -> int:
        return len(words(self.text))


def join(sentences: list[Sentence]) -> str:
    return " ".join(s.text for s in sentences)


# ---------------------------------------------------------------- building descriptions

def _mention(t: Thing, rng: random.Random, p_colour=0.85, p_size=0.45) -> Mention:
    return Mention(t.kind, t.count, t.colour if rng.random() < p_colour else None,
                   t.size if rng.random() < p_size else None)


def _where(scene: Scene, t: Thing, rng: random.Random) -> str:
    """Where a thing is, sometimes with the colour of its ground ("on the green grass")."""
    where = scene.where(t)
    ground = where.split()[-1]
    if t.zone == "sky" and scene.time == "night" and rng.random() < 0.3:
        return "in the dark sky"
    if t.zone == "sky" and scene.weather == "sunny" and rng.random() < 0.3:
        return "in the blue sky"
    if ground in GROUND_COLOUR and rng.random() < 0.4:
        return where.replace("the ", f"the {GROUND_COLOUR[ground]} ")
    return where


def relations(scene: Scene, i: int) -> list[tuple[str, int]]:
    """True relations of thing i to others, the ones a child would say first."""
    out = []
    a = scene.things[i]
    for j, b in enumerate(scene.things):
        if j == i:
            continue
        flat = a.zone == b.zone != "sky" or a.on == j or b.on == i  # no "above" between things on the ground
        for rel in ("on", "next to", "left of", "right of") if flat else ("above", "below", "left of", "right of"):
            if relation_holds(scene, a, rel, b):
                out.append((rel, j))
                break
    return out


def _scene_facts(scene: Scene) -> dict:
    return {"weather": scene.weather, "time": scene.time, "at_place": AT_PLACE[scene.place],
            "go": GO_PLACE[scene.place]}


def _scene_lines(scene: Scene, rng: random.Random, n: int) -> list[Sentence]:
    f = _scene_facts(scene)
    lines = [t.format(**f) for t in TIME_LINES] + PLACE_LINES[scene.place] + WEATHER_LINES[scene.weather]
    return [_sentence(s) for s in rng.sample(lines, n)]


def _thing_block(scene: Scene, i: int, rng: random.Random, known: set, p_colour: float) -> list[Sentence]:
    """Sentences about thing i: an introduction, then what it is like and what it does."""
    t = scene.things[i]
    m, rels = _mention(t, rng, p_colour), relations(scene, i)
    if t.kind in known:
        first = Sentence(rng.choice(WHERE), replace(m, colour=None, size=None), where=_where(scene, t, rng))
    elif rels and rng.random() < 0.5:
        rel, j = rng.choice(rels)
        o = scene.things[j]
        tpl = rng.choice(INTRO_REL[:3] if o.kind not in known else INTRO_REL[3:])
        first = Sentence(tpl, m, _mention(o, rng, 0.6, 0.3), rel=rel)
        known.add(o.kind)
    elif t.zone == "sky" and t.kind in ("sun", "moon", "star") and rng.random() < 0.3:
        first = Sentence(rng.choice(INTRO_SKY), m)
    else:
        first = Sentence(rng.choice(INTRO_WHERE if rng.random() < 0.7 else INTRO), m, where=_where(scene, t, rng))
    known.add(t.kind)
    more = [Sentence(rng.choice(ACT), Mention(t.kind, t.count), act=rng.choice(ACTS.get(t.kind, ACTS["any"])))]
    if first.m.colour is None or (first.m.size is None and rng.random() < 0.5):
        more.append(Sentence(rng.choice(ADJ), Mention(t.kind, t.count, t.colour, rng.choice([t.size, None]))))
    if "{where}" not in first.template:
        more.append(Sentence(WHERE[0], Mention(t.kind, t.count), where=_where(scene, t, rng)))
    if t.count > 1 and rng.random() < 0.5:
        more.append(Sentence(COUNT[0], Mention(t.kind, t.count)))
    for rel, j in rels:
        if scene.things[j].kind in known and "{rel}" not in first.template:
            more.append(Sentence(REL[0], Mention(t.kind, t.count), Mention(scene.things[j].kind, scene.things[j].count), rel))
            break
    rng.shuffle(more)
    if "{it}" in more[0].template:  # "it" must follow a sentence that names the thing first
        more.append(more.pop(0))
    return [first] + more


def _fit(parts: list[tuple[Sentence, int]], lo: int, hi: int, fillers: list[str], rng: random.Random) -> list[Sentence]:
    """Keep the sentences of priority 0, add others (1 before 2) while they fit, then pad with fillers
    to [lo, hi] words. Order is kept, so a story still reads in order."""
    size = lambda s: s.n_words
    keep = [prio == 0 for _, prio in parts]
    total = sum(size(s) for s, prio in parts if prio == 0)
    for k in sorted(range(len(parts)), key=lambda k: (parts[k][1], rng.random())):
        if not keep[k] and total + size(parts[k][0]) <= hi:
            keep[k], total = True, total + size(parts[k][0])
    last = None  # "it" must come right after a sentence about the same thing
    for k, (s, _) in enumerate(parts):
        if keep[k] and "{it}" in s.template and last != s.m.kind:
            keep[k], total = False, total - size(s)
        elif keep[k] and s.m:
            last = s.m.kind
    out = [s for (s, _), k in zip(parts, keep) if k]
    pool = [_sentence(f) for f in rng.sample(fillers, len(fillers))]
    while total < lo and pool:
        fits = [f for f in pool if size(f) <= lo - total] or [f for f in pool if size(f) <= hi - total]
        if not fits:
            break
        f = fits[0]
        pool.remove(f)
        out.append(f)
        total += size(f)
    return out


@functools.lru_cache(maxsize=None)
def _sentence(text: str) -> Sentence:
    """Fixed sentences are made once, so their text and length are worked out once."""
    return Sentence(text)


def short_desc(scene: Scene, rng: random.Random) -> list[Sentence]:
    known: set = set()
    order = rng.sample(range(len(scene.things)), len(scene.things))
    parts = [(s, k * 2) for k, s in enumerate(_scene_lines(scene, rng, 2))]
    for n, i in enumerate(order):
        if scene.things[i].kind not in known:
            parts += [(s, min(n, 1) if k == 0 else 2) for k, s in enumerate(_thing_block(scene, i, rng, known, 1.0))]
    return _fit(parts, *LENGTHS["short"], FILLERS, rng)


def long_desc(scene: Scene, rng: random.Random) -> list[Sentence]:
    known: set = set()
    f = _scene_facts(scene)
    parts = [(_sentence(rng.choice(OPENERS).format(**f)), 0)] + [(s, 1) for s in _scene_lines(scene, rng, 2)]
    for i in rng.sample(range(len(scene.things)), len(scene.things)):
        parts += [(s, min(k, 1)) for k, s in enumerate(_thing_block(scene, i, rng, known, 0.85))]
    return _fit(parts, *LENGTHS["long"], FILLERS + CLOSERS[scene.time], rng)


def questions(scene: Scene, rng: random.Random) -> list[dict]:
    """Questions a child can answer from the picture, each with its answer and type."""
    qs = []
    add = lambda q, a, kind: qs.append({"question": q, "answer": a, "type": kind})
    for t in rng.sample(scene.things, min(3, len(scene.things))):
        the, be = Mention(t.kind, t.count).words("the"), "is" if t.count == 1 else "are"
        add(f"What colour {be} {the}?", t.colour, "colour")
        add(f"How many {plural(t.kind)} are there?", NUMBER_WORDS[t.count], "count")
        add(f"Where {be} {the}?", scene.where(t), "where")
        add(f"{be.capitalize()} {the} big or small?", t.size, "size")
        other = rng.choice([c for c in COLOURS if c != t.colour])
        c = rng.choice([t.colour, other])
        add(f"{be.capitalize()} {the} {c}?", "yes" if c == t.colour else "no", "yesno")
    t = rng.choice(scene.things)
    add(f"Is there {Mention(t.kind).words('a')}?", "yes", "exists")
    absent = [k for k in KINDS if not scene.find(k)]
    add(f"Is there {Mention(rng.choice(absent)).words('a')}?", "no", "exists")
    for i, t in enumerate(scene.things):
        near = [j for rel, j in relations(scene, i) if rel == "next to"]
        if len(near) == 1 and sum(relation_holds(scene, o, "next to", t) for o in scene.things) == 1:
            o = scene.things[near[0]]
            add(f"What is next to {Mention(t.kind, t.count).words('the')}?",
                Mention(o.kind, o.count, o.colour).words("a"), "next_to")
            break
    add("Is it day or night?", scene.time, "time")
    add("What is the weather like?", scene.weather, "weather")
    add("Where are we?", AT_PLACE[scene.place], "place")
    return qs


def negatives(scene: Scene, shorts: list[list[Sentence]], rng: random.Random) -> list[dict]:
    """For each kind of swap, one description with exactly one thing changed, so one claim is false."""
    out = []
    for swap in ("colour", "size", "count", "relation", "thing"):
        options = [(d, k, new) for d in shorts for k, s in enumerate(d) if (new := _swapped(scene, s, swap, rng))]
        if options:
            d, k, new = rng.choice(options)
            bad = d[:k] + [new] + d[k + 1:]
            out.append({"text": join(bad), "swap": swap, "true_text": join(d)})
    return out


def _swapped(scene: Scene, s: Sentence, swap: str, rng: random.Random) -> Sentence | None:
    """The sentence with one `swap` change, or None if it has nothing to change of that kind."""
    slots = [(f, getattr(s, f)) for f in ("m", "m2") if getattr(s, f) and "{" in s.template]
    if swap in ("colour", "size"):
        slots = [(f, m) for f, m in slots if getattr(m, swap)]
        if not slots:
            return None
        f, m = rng.choice(slots)
        new = rng.choice([c for c in (COLOURS if swap == "colour" else SIZES) if c != getattr(m, swap)])
        return replace(s, **{f: replace(m, **{swap: new})})
    if swap in ("count", "thing"):
        slots = [(f, m) for f, m in slots if "{a}" in s.template and f == "m" or "{a2}" in s.template and f == "m2"]
        if not slots:
            return None
        f, m = rng.choice(slots)
        if swap == "count":
            return replace(s, **{f: replace(m, count=rng.choice([n for n in (2, 3, 4, 5) if n != m.count]))})
        absent = [k for k in KINDS if not scene.find(k)]
        return replace(s, **{f: replace(m, kind=rng.choice(absent))})
    if swap == "relation" and s.rel and s.m2:
        a, b = scene.find(s.m.kind), scene.find(s.m2.kind)
        false = [r for r in REL_WORDS if r != s.rel and not relation_holds(scene, a, r, b)]
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
                    "on": "below", "next to": "above"}[s.rel]
        return replace(s, rel=opposite if opposite in false else rng.choice(false))
    return None


def describe(scene: Scene, rng: random.Random, n: int = 3) -> dict:
    """n distinct ShortDescs and LongDescs (when the scene allows), questions and hard negatives."""
    shorts, longs = _distinct(short_desc, scene, rng, n), _distinct(long_desc, scene, rng, n)
    return {"short": [join(d) for d in shorts], "long": [join(d) for d in longs],
            "questions": questions(scene, rng), "negatives": negatives(scene, shorts, rng)}


def _distinct(make, scene: Scene, rng: random.Random, n: int) -> list[list[Sentence]]:
    out, seen = [], set()
    for _ in range(4 * n):
        d = make(scene, rng)
        if join(d) not in seen:
            out.append(d)
            seen.add(join(d))
        if len(out) == n:
            break
    return out + out[: n - len(out)] if out else out


# ---------------------------------------------------------------- the grammar

CATEGORIES = {**{c: "C" for c in COLOURS}, **{s: "S" for s in SIZES}, **{n: "N" for n in NUMBER_WORDS},
              **{k: "T" for k in KINDS}, **{KINDS[k].plural: "TS" for k in KINDS}, "fish": "TF",
              "a": "A", "an": "A", "day": "D", "night": "D", **{w: "W" for w in ("sunny", "cloudy", "rainy", "snowy", "clear")},
              **{p: "P" for p in PLACES if p != "snow"}, **{g: "G" for g in (*GROUND.values(), "water")}}


def abstract(ws: list[str]) -> str:
    """A sentence's shape: "I see a big red ball" -> "i see A S C T"."""
    return " ".join(CATEGORIES.get(w, w) for w in ws)


@functools.lru_cache(maxsize=1)
def grammar() -> re.Pattern:
    """One regular expression matching the shape of every sentence the templates can produce."""
    alt = lambda xs: "(?:" + "|".join(sorted({re.escape(abstract(words(x))) for x in xs})) + ")"
    np = lambda det, nouns, adj=True: det + (" (?:S )?(?:C )?" if adj else " ") + nouns
    one, many = "(?:T|TF)", "(?:TS|TF)"
    where = alt([f"on the {c} {g}" for g, c in GROUND_COLOUR.items()] + [f"on the {g}" for g in GROUND_COLOUR]
                + ["in the sky", "in the blue sky", "in the dark sky", "on the water", "in the water", "in the blue water"]
                + ["on the box", "on the chair"])
    acts = [alt([a[k] for v in ACTS.values() for a in v]) for k in (0, 1)]
    patterns = set()
    for tpl in INTRO + INTRO_WHERE + INTRO_REL + INTRO_SKY + INTRO_PAIR + WHERE + REL + ADJ + ACT + COUNT:
        for k, (nouns, det) in enumerate(((one, "A"), (many, "N"))):
            slots = {"a": np(det, nouns), "the": np("the", nouns), "the_bare": np("the", nouns, False),
                     "be": ("is", "are")[k], "it": ("it", "they")[k], "act": acts[k], "adj": "(?:S and C|S|C)",
                     "where": where, "rel": alt(REL_WORDS.values()),
                     "a2": f"(?:{np('A', one)}|{np('N', many)})", "the2": np("the", f"(?:{one}|{many})")}
            parts = re.split(r"(\{\w+\})", tpl)
            patterns.add(" ".join(slots[p[1:-1]] if p.startswith("{") else re.escape(abstract(words(p)))
                                  for p in parts if words(p) or p.startswith("{")))
    fixed = [t.format(weather=w, time=d, at_place=AT_PLACE[p], go=GO_PLACE[p])
             for t in OPENERS + TIME_LINES for w in WEATHER_LINES for d in ("day", "night") for p in PLACES]
    for lines in (*PLACE_LINES.values(), *WEATHER_LINES.values(), *CLOSERS.values(), FILLERS, fixed):
        patterns |= {re.escape(abstract(words(s))) for s in lines}
    return re.compile("|".join(sorted(patterns)))
