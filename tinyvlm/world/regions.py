"""Where a word's thing is drawn: what the attribution suite (tinyvlm/eval/attribution.py) checks a
map's peak and mass against. Exact, because the world drew the picture from its scene graph."""
from __future__ import annotations

import numpy as np

from .render import _items
from .scene import KINDS, Scene

WORD_KIND = {**{k.name: k.name for k in KINDS.values()}, **{k.plural: k.name for k in KINDS.values()}}


def regions(record, word: str, size: tuple[int, int]) -> np.ndarray | None:
    """A bool mask (height, width) over the record's picture of `size` (width, height): True inside
    the drawn box of each item of every thing of the kind `word` names ("duck" or "ducks"). None
    when the word names no kind of thing, or none in this scene (a thing the text made up)."""
    kind = WORD_KIND.get(word.lower())
    if kind is None or record.scene is None:
        return None
    things = [t for t in Scene.from_dict(record.scene).things if t.kind == kind]
    if not things:
        return None
    w, h = size
    xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h  # pixel centres as fractions
    mask = np.zeros((h, w), dtype=bool)
    for t in things:
        for x0, y0, x1, y1 in _items(t):
            mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None]
    return mask
