"""Scene graphs of the picture-book world: what is in the picture, where it is, what it looks like.

A scene is the ground truth that every description, question and check is made from. Coordinates
are fractions of the picture (x to the right, y down), so one scene renders at any resolution.
Each kind of thing appears at most once per scene (as a group of 1-5 alike things), so "the ball"
always names one group and every statement about it can be checked.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from ..errors import TinyVLMError

COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray")
SIZES = ("small", "big")
TIMES = ("day", "night")
PLACES = ("park", "beach", "sea", "snow", "room")
RELATIONS = ("left of", "right of", "above", "below", "next to", "on", "in")
MAX_THINGS = 6  # things drawn in one picture, counting each of "three balls"
MAX_GROUPS = 4  # kinds of thing in one picture

# Where things can be in each place, and the word for its ground. Heights are fractions of the picture.
ZONES = {"park": ("sky", "ground", "on"), "beach": ("sky", "ground", "water", "underwater", "on"),
         "sea": ("sky", "water", "underwater"), "snow": ("sky", "ground", "on"), "room": ("ground", "on")}
GROUND = {"park": "grass", "beach": "sand", "snow": "snow", "room": "floor"}
HORIZON = {"park": 0.45, "beach": 0.42, "sea": 0.40, "snow": 0.45, "room": 0.55}  # sky (or wall) ends
WATER = {"beach": (0.42, 0.60), "sea": (0.40, 1.0)}  # top and bottom of the water
WEATHERS = {("day", False): ("sunny", "cloudy", "rainy"), ("night", False): ("clear", "cloudy", "rainy"),
            ("day", True): ("sunny", "cloudy", "snowy"), ("night", True): ("clear", "cloudy", "snowy")}
# What a place lets you say you see ("I see the sea" is true at the beach too).
PLACE_WORDS = {"park": {"park", "grass", "sky"}, "beach": {"beach", "sand", "sea", "water", "sky"},
               "sea": {"sea", "water", "sky"}, "snow": {"snow", "sky"}, "room": {"room", "floor", "sky"}}  # the sky shows in the window
SUPPORTERS = ("box", "chair")  # things other things can sit on


@dataclass(frozen=True)
class Kind:
    name: str
    plural: str
    zones: tuple[str, ...]
    colours: tuple[str, ...]
    w: float  # one big item, as a fraction of the picture
    h: float
    max_count: int = 3
    when: str = ""  # "day" or "night" if it only shows then
    places: tuple[str, ...] = PLACES
    weathers: tuple[str, ...] = ()  # if set, only in these weathers


_OUT = ("park", "beach", "snow")
KINDS = {k.name: k for k in [
    Kind("ball", "balls", ("ground", "on"), COLOURS, .09, .09),
    Kind("box", "boxes", ("ground",), COLOURS, .15, .15, 2),
    Kind("house", "houses", ("ground",), COLOURS, .30, .32, 1, places=_OUT),
    Kind("tree", "trees", ("ground",), ("green", "orange", "yellow"), .22, .36, 3, places=("park", "snow")),
    Kind("flower", "flowers", ("ground",), ("red", "yellow", "pink", "purple", "blue", "white", "orange"),
         .07, .13, 4, places=("park", "room")),
    Kind("sun", "suns", ("sky",), ("yellow", "orange"), .17, .17, 1, "day", weathers=("sunny", "cloudy")),
    Kind("moon", "moons", ("sky",), ("yellow", "white"), .13, .13, 1, "night"),
    Kind("cloud", "clouds", ("sky",), ("white", "gray"), .22, .11, 3),
    Kind("star", "stars", ("sky",), ("yellow", "white"), .06, .06, 5, "night", weathers=("clear",)),
    Kind("car", "cars", ("ground",), COLOURS, .24, .14, 2, places=("park", "snow", "room")),
    Kind("boat", "boats", ("water",), COLOURS, .20, .18, 2),
    Kind("kite", "kites", ("sky",), COLOURS, .10, .16, 2, "day"),
    Kind("balloon", "balloons", ("sky",), COLOURS, .08, .14, 3),
    Kind("fish", "fish", ("underwater",), ("orange", "blue", "yellow", "red", "pink", "purple", "green"), .09, .05),
    Kind("bird", "birds", ("sky", "ground", "on"), ("red", "blue", "yellow", "black", "brown"), .09, .07),
    Kind("cat", "cats", ("ground", "on"), ("black", "white", "gray", "orange", "brown"), .13, .12, 2),
    Kind("dog", "dogs", ("ground",), ("brown", "black", "white", "gray"), .16, .13, 2),
    Kind("duck", "ducks", ("water", "ground"), ("yellow", "white", "brown"), .10, .09),
    Kind("apple", "apples", ("ground", "on"), ("red", "green", "yellow"), .065, .07),
    Kind("cup", "cups", ("ground", "on"), COLOURS, .07, .08),
    Kind("hat", "hats", ("ground", "on"), COLOURS, .11, .08, 2),
    Kind("chair", "chairs", ("ground",), COLOURS, .13, .20, 2, places=("park", "beach", "room")),
]}


@dataclass
class Thing:
    """A group of `count` alike things in a row; `box` (x0, y0, x1, y1) holds the whole group."""
    kind: str
    colour: str
    size: str
    count: int
    zone: str  # sky, ground, water (floats on it), underwater (in it), on (sits on things[on])
    box: tuple[float, float, float, float]
    on: int = -1


@dataclass
class Scene:
    place: str
    time: str
    weather: str
    things: list[Thing] = field(default_factory=list)
    seed: int = 0  # the renderer's jitter (poses, shades), so a scene always draws the same

    def to_dict(self) -> dict:
        d = asdict(self)
        for t in d["things"]:
            t["box"] = list(t["box"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        try:
            things = [Thing(**{**t, "box": tuple(float(v) for v in t["box"])}) for t in d["things"]]
            scene = cls(d["place"], d["time"], d["weather"], things, int(d.get("seed", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise TinyVLMError(f"not a picture-book scene: {e}") from None
        if scene.place not in PLACES or scene.time not in TIMES or any(t.kind not in KINDS for t in things):
            raise TinyVLMError(f"not a picture-book scene: unknown place, time or kind in {d}")
        return scene

    @property
    def ground(self) -> str:
        return GROUND.get(self.place, "water")

    def find(self, kind: str) -> Thing | None:
        return next((t for t in self.things if t.kind == kind), None)

    def where(self, t: Thing) -> str:
        """The child's answer to "Where is it?"."""
        if t.zone == "on":
            return f"on the {self.things[t.on].kind}"
        return {"sky": "in the sky", "water": "on the water", "underwater": "in the water"}.get(
            t.zone, f"on the {self.ground}")


def relation_holds(scene: Scene, a: Thing, rel: str, b: Thing) -> bool:
    """Whether `a rel b` is true in the picture, judged from the boxes (so any claim can be checked)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    x_overlap, y_overlap = ax0 < bx1 and bx0 < ax1, ay0 < by1 and by0 < ay1
    if rel == "on":
        return a.on >= 0 and scene.things[a.on] is b
    if rel == "left of":
        return ax1 < bx0
    if rel == "right of":
        return ax0 > bx1
    if rel == "above":
        return ay1 <= by0 + 1e-6 and x_overlap
    if rel == "below":
        return ay0 >= by1 - 1e-6 and x_overlap
    if rel == "next to":
        return y_overlap and 0 <= max(bx0 - ax1, ax0 - bx1) <= 0.1
    return False


def sample_scene(rng: random.Random, max_things: int = MAX_THINGS) -> Scene:
    """A random scene that makes sense: boats on water, stars at night, kites in the sky."""
    if not isinstance(max_things, int) or not 1 <= max_things <= MAX_THINGS:
        raise TinyVLMError(f"max_things must be 1..{MAX_THINGS} (more do not fit a picture), got {max_things}")
    place = rng.choice(PLACES)
    time = "day" if rng.random() < 0.65 else "night"
    weather = rng.choice(WEATHERS[time, place == "snow"])
    kinds = [k for k in KINDS.values() if place in k.places and k.when in ("", time)
             and (not k.weathers or weather in k.weathers) and set(k.zones) & set(ZONES[place]) - {"on"}]
    rng.shuffle(kinds)
    scene = Scene(place, time, weather)
    want = rng.randint(1, min(MAX_GROUPS, max_things))
    for kind in kinds:
        left = max_things - sum(t.count for t in scene.things)
        if len(scene.things) == want or left < 1:
            break
        thing = _place(rng, kind, scene, left)
        if thing:
            scene.things.append(thing)
    scene.seed = rng.randrange(2**31)
    return scene


def _place(rng: random.Random, kind: Kind, scene: Scene, left: int) -> Thing | None:
    """Find a free spot for a group of this kind, or None if the picture is too full."""
    free = [i for i, t in enumerate(scene.things) if t.kind in SUPPORTERS and t.count == 1 and t.zone == "ground"
            and not any(o.on == i for o in scene.things)]
    zones = [z for z in kind.zones if z in ZONES[scene.place] and (z != "on" or free)]
    zone = rng.choice(zones)
    count = 1 if zone == "on" else min(rng.choices((1, 2, 3, 4, 5), (6, 3, 2, 1, 1))[0], kind.max_count, left)
    size = rng.choice(SIZES)
    # Picture-book things are drawn large: at 64 px a table-sized ball is 5 pixels, too small for a
    # model trained from scratch in minutes to learn to see (measured: colour VQA at chance).
    scale = 2.0 if size == "big" else 1.3
    w, h = min(kind.w * scale, 0.45), min(kind.h * scale, 0.5)
    W = count * w + (count - 1) * 0.2 * w
    top = HORIZON[scene.place]
    for _ in range(30):
        x0 = rng.uniform(0.02, 0.98 - W)
        if zone == "sky":
            y1 = rng.uniform(0.04 + h, top - 0.03)
        elif zone == "ground":
            y1 = rng.uniform(max(top, WATER.get(scene.place, (0, 0))[1]) + 0.1, 0.97)
        elif zone == "water":
            wt, wb = WATER[scene.place]
            y1 = rng.uniform(wt + 0.06, min(wb, wt + 0.3))
        elif zone == "underwater":
            wt, wb = WATER[scene.place]
            y1 = rng.uniform(wt + 0.06 + h, wb - 0.02)
        else:  # on a box or chair
            sup = scene.things[rng.choice(free)]
            sx0, sy0, sx1, _ = sup.box
            if W > (sx1 - sx0) * 1.1:
                continue
            x0, y1 = (sx0 + sx1 - W) / 2 + rng.uniform(-0.02, 0.02), sy0
        same = [t for t in scene.things if t.zone == zone and zone in ("ground", "sky", "water")]
        if same and zone != "on" and rng.random() < 0.4:  # stand next to something, so "next to" is common
            t = rng.choice(same)
            gap = rng.uniform(0.01, 0.06)
            x0 = t.box[2] + gap if rng.random() < 0.5 else t.box[0] - gap - W
            y1 = t.box[3] + rng.uniform(-0.02, 0.02)
        box = (round(x0, 4), round(y1 - h, 4), round(x0 + W, 4), round(y1, 4))
        if box[0] < 0.01 or box[2] > 0.99 or box[1] < 0.01 or box[3] > 0.99:
            continue
        on = scene.things.index(sup) if zone == "on" else -1
        if all(_apart(box, t.box) for i, t in enumerate(scene.things) if i != on):
            return Thing(kind.name, rng.choice(kind.colours), size, count, zone, box, on)
    return None


def _apart(a: tuple, b: tuple, margin: float = 0.01) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]
