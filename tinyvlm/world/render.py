"""Draw a scene as a picture-book image: flat colours, dark outlines, simple shapes.

We draw at 2-4x the asked size and shrink with a box filter, which anti-aliases for almost nothing.
Poses (facing left or right) and shades come from `scene.seed`, so a scene always draws the same.
"""
from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from ..errors import TinyVLMError
from .scene import HORIZON, KINDS, WATER, Scene, Thing

RGB = {"red": (220, 45, 45), "blue": (45, 95, 220), "green": (55, 170, 65), "yellow": (250, 215, 45),
       "orange": (250, 140, 35), "purple": (145, 65, 185), "pink": (245, 135, 185), "brown": (140, 90, 50),
       "black": (40, 40, 40), "white": (245, 245, 245), "gray": (150, 150, 155)}
SKY = {"sunny": (125, 195, 245), "cloudy": (170, 180, 192), "rainy": (130, 142, 158), "snowy": (200, 210, 225),
       "clear": (20, 28, 70)}
GROUND_RGB = {"park": (95, 180, 80), "beach": (238, 214, 155), "snow": (240, 245, 252), "room": (175, 125, 80)}
WATER_RGB, INK, BROWN, LEAF = (45, 125, 205), (35, 30, 40), (120, 80, 45), (60, 150, 60)


def render(scene: Scene, size: int = 64) -> Image.Image:
    if not isinstance(size, int) or not 32 <= size <= 512:
        raise TinyVLMError(f"image size must be 32..512 pixels, got {size}")
    ss = 4 if size <= 96 else 2  # supersampling factor
    S = size * ss
    rng = random.Random(scene.seed)
    night = scene.time == "night"
    sky = SKY[scene.weather] if not night else _shade(SKY["clear"], 1.0 if scene.weather == "clear" else 1.5)
    img = Image.new("RGB", (S, S), sky)
    d = ImageDraw.Draw(img)
    h = HORIZON[scene.place] * S
    dim = 0.55 if night else 1.0
    if scene.place == "room":
        d.rectangle((0, 0, S, h), fill=_shade((235, 220, 190), dim))
        d.rectangle((S * .08, S * .1, S * .34, S * .4), fill=sky, outline=INK, width=ss * 2)  # window
        d.line((S * .21, S * .1, S * .21, S * .4), fill=INK, width=ss)
    if scene.place in GROUND_RGB:
        d.rectangle((0, h, S, S), fill=_shade(GROUND_RGB[scene.place], dim))
    if scene.place in WATER:
        top, bottom = WATER[scene.place]
        d.rectangle((0, top * S, S, bottom * S), fill=_shade(WATER_RGB, dim))
    for t in sorted(scene.things, key=lambda t: (t.zone != "sky", t.zone == "on", t.box[3])):
        for box in _items(t):
            pen = Pen(d, [v * S for v in box], _shade(RGB[t.colour], rng.uniform(0.9, 1.08) * (0.8 if night and t.zone != "sky" else 1)),
                      rng.random() < 0.5, max(1, round(S / 160)), sky)
            DRAW[t.kind](pen)
    _weather(d, scene, S, rng)
    return img.reduce(ss)


def _items(t: Thing) -> list[tuple]:
    """The boxes of the single things in a group, side by side."""
    x0, y0, x1, y1 = t.box
    w = (x1 - x0) / (t.count + 0.2 * (t.count - 1))
    return [(x0 + k * 1.2 * w, y0, x0 + k * 1.2 * w + w, y1) for k in range(t.count)]


def _shade(c: tuple, f: float) -> tuple:
    return tuple(max(0, min(255, int(v * f))) for v in c)


def _weather(d: ImageDraw.ImageDraw, scene: Scene, S: int, rng: random.Random) -> None:
    if scene.weather == "rainy":
        for _ in range(70):
            x, y = rng.uniform(0, S), rng.uniform(0, S)
            d.line((x, y, x - S * .015, y + S * .05), fill=(200, 215, 240), width=max(1, S // 200))
    elif scene.weather == "snowy":
        for _ in range(60):
            x, y, r = rng.uniform(0, S), rng.uniform(0, S), S * rng.uniform(.004, .009)
            d.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 255))


class Pen:
    """Draws in a thing's own box: (u, v) in 0..1 are its left-right and top-bottom fractions."""

    def __init__(self, d, box, fill, flip, width, sky):
        self.d, self.box, self.fill, self.flip, self.w, self.sky = d, box, fill, flip, width, sky

    def p(self, u: float, v: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + (1 - u if self.flip else u) * (x1 - x0), y0 + v * (y1 - y0))

    def ellipse(self, u0, v0, u1, v1, fill=None, outline=True):
        (a, b), (c, e) = self.p(u0, v0), self.p(u1, v1)
        self.d.ellipse((min(a, c), b, max(a, c), e), fill=fill or self.fill, outline=INK if outline else None, width=self.w)

    def rect(self, u0, v0, u1, v1, fill=None):
        (a, b), (c, e) = self.p(u0, v0), self.p(u1, v1)
        self.d.rectangle((min(a, c), b, max(a, c), e), fill=fill or self.fill, outline=INK, width=self.w)

    def poly(self, pts, fill=None, outline=True):
        self.d.polygon([self.p(u, v) for u, v in pts], fill=fill or self.fill, outline=INK if outline else None, width=self.w)

    def line(self, pts, fill=INK, width=1):
        self.d.line([self.p(u, v) for u, v in pts], fill=fill, width=self.w * width)


def _star_points(cx, cy, r1, r2, n=5):
    return [(cx + (r1 if k % 2 == 0 else r2) * math.sin(k * math.pi / n), cy - (r1 if k % 2 == 0 else r2) * math.cos(k * math.pi / n))
            for k in range(2 * n)]


def _ball(p: Pen) -> None:
    p.ellipse(0, 0, 1, 1)
    p.line([(0.5, 0.02), (0.5, 0.98)], (250, 250, 250))
    p.ellipse(.2, .18, .38, .34, (255, 255, 255), False)


def _apple(p: Pen) -> None:
    p.ellipse(0, .15, 1, 1)
    p.line([(.5, .2), (.55, 0)], BROWN, 2)
    p.ellipse(.55, 0, .85, .15, LEAF)


def _sun(p: Pen) -> None:
    for k in range(8):  # rays
        a = k * math.pi / 4
        p.line([(.5 + .36 * math.cos(a), .5 + .36 * math.sin(a)), (.5 + .5 * math.cos(a), .5 + .5 * math.sin(a))], p.fill, 2)
    p.ellipse(.18, .18, .82, .82)


def _moon(p: Pen) -> None:
    p.ellipse(0, 0, 1, 1)
    p.ellipse(.3, -.05, 1.15, .8, p.sky, False)


def _star(p: Pen) -> None:
    p.poly(_star_points(.5, .52, .5, .2))


def _cloud(p: Pen) -> None:
    for u0, v0, u1, v1 in ((0, .35, .45, 1), (.2, 0, .7, .8), (.5, .25, 1, 1), (.25, .45, .8, 1)):
        p.ellipse(u0, v0, u1, v1, outline=False)


def _kite(p: Pen) -> None:
    p.poly([(.5, 0), (1, .3), (.5, .65), (0, .3)])
    p.line([(.5, 0), (.5, .65)])
    p.line([(0, .3), (1, .3)])
    p.line([(.5, .65), (.35, .8), (.6, .9), (.45, 1)])


def _balloon(p: Pen) -> None:
    p.line([(.5, .72), (.45, .85), (.55, 1)])
    p.ellipse(.05, 0, .95, .75)
    p.ellipse(.25, .12, .4, .3, (255, 255, 255), False)


def _box(p: Pen) -> None:
    p.rect(0, .25, .8, 1)
    p.poly([(0, .25), (.2, 0), (1, 0), (.8, .25)], _shade(p.fill, 1.2))
    p.poly([(.8, .25), (1, 0), (1, .75), (.8, 1)], _shade(p.fill, .75))


def _house(p: Pen) -> None:
    p.rect(.1, .45, .9, 1)
    p.poly([(0, .47), (.5, 0), (1, .47)], (170, 60, 50))
    p.rect(.42, .68, .6, 1, BROWN)
    p.rect(.17, .55, .35, .72, (200, 230, 250))


def _tree(p: Pen) -> None:
    p.rect(.42, .55, .58, 1, BROWN)
    for b in ((0, .2, .6, .7), (.4, .2, 1, .7), (.15, 0, .85, .5)):
        p.ellipse(*b)


def _flower(p: Pen) -> None:
    p.line([(.5, .45), (.5, 1)], LEAF, 2)
    p.ellipse(.5, .65, .85, .8, LEAF)
    for k in range(5):  # petals around the middle
        u, v = .5 + .24 * math.cos(k * 2 * math.pi / 5), .27 + .13 * math.sin(k * 2 * math.pi / 5)
        p.ellipse(u - .17, v - .1, u + .17, v + .1)
    p.ellipse(.36, .19, .64, .35, (250, 200, 40))


def _car(p: Pen) -> None:
    p.poly([(.2, .4), (.3, .05), (.72, .05), (.82, .4)])
    p.rect(0, .38, 1, .8)
    p.rect(.34, .12, .48, .38, (200, 230, 250))
    p.rect(.54, .12, .7, .38, (200, 230, 250))
    p.ellipse(.1, .6, .34, 1, INK)
    p.ellipse(.66, .6, .9, 1, INK)


def _boat(p: Pen) -> None:
    p.line([(.5, .62), (.5, 0)], INK, 2)
    p.poly([(.53, .05), (.53, .55), (.92, .55)], (250, 250, 250))
    p.poly([(0, .6), (1, .6), (.82, 1), (.18, 1)])


def _fish(p: Pen) -> None:
    p.poly([(.68, .5), (1, .1), (1, .9)])
    p.ellipse(0, .1, .78, .9)
    p.ellipse(.14, .3, .26, .48, INK, False)


def _bird(p: Pen) -> None:
    p.ellipse(.1, .3, .8, 1)
    p.ellipse(.55, 0, .95, .55)
    p.poly([(.93, .22), (1, .32), (.92, .38)], (250, 160, 40))
    p.poly([(.2, .5), (.5, .55), (.35, .85)], _shade(p.fill, .7))
    p.ellipse(.74, .15, .8, .25, INK, False)


def _duck(p: Pen) -> None:
    p.ellipse(0, .4, .85, 1)
    p.ellipse(.5, 0, .9, .5)
    p.poly([(.86, .2), (1, .3), (.86, .36)], (250, 150, 40))
    p.ellipse(.7, .15, .76, .23, INK, False)
    p.poly([(.15, .55), (.5, .6), (.3, .85)], _shade(p.fill, .8))


def _cat(p: Pen) -> None:
    p.line([(.05, .9), (0, .4), (.1, .2)], p.fill, 3)
    p.ellipse(.05, .45, .75, 1)
    p.poly([(.55, .18), (.6, 0), (.7, .12)])
    p.poly([(.82, .12), (.92, 0), (.97, .18)])
    p.ellipse(.5, .08, 1, .55)
    p.ellipse(.63, .25, .7, .33, INK, False)
    p.ellipse(.82, .25, .89, .33, INK, False)


def _dog(p: Pen) -> None:
    p.line([(.12, .45), (0, .2)], p.fill, 3)
    p.rect(.18, .8, .28, 1)
    p.rect(.55, .8, .65, 1)
    p.ellipse(.05, .35, .78, .88)
    p.ellipse(.55, .05, 1, .55)
    p.ellipse(.52, .1, .68, .5, _shade(p.fill, .7))
    p.ellipse(.9, .25, 1, .35, INK, False)
    p.ellipse(.76, .18, .82, .26, INK, False)


def _cup(p: Pen) -> None:
    p.ellipse(.6, .25, 1, .7)
    p.ellipse(.7, .35, .9, .6, (255, 255, 255))
    p.poly([(0, 0), (.75, 0), (.65, 1), (.1, 1)])


def _hat(p: Pen) -> None:
    p.ellipse(0, .7, 1, 1)
    p.rect(.2, .05, .8, .85)
    p.rect(.2, .6, .8, .75, _shade(p.fill, .6))


def _chair(p: Pen) -> None:
    p.rect(.1, 0, .25, .6)
    p.rect(.1, .5, .9, .62)
    p.rect(.1, .62, .2, 1)
    p.rect(.8, .62, .9, 1)

DRAW = {name: globals()["_" + name] for name in KINDS}
