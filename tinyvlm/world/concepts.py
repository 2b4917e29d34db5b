"""The world's concept targets: what each patch of a picture-book picture should know, from its scene graph.

Each patch learns the kind, colour, size and count of every thing whose box covers it, and where
that thing is from the others ("left of cat"). Every patch also learns the place, time and weather.
Dense labels teach faster than one label for the whole picture: held-out colour accuracy was 0.62
against 0.51 after 3 minutes, in benchmarks/vision_probe.py's setup. tinyvlm.concepts explains
concept pretraining and reads these through the plug-in.
"""
from __future__ import annotations

import torch

from ..data.records import Record
from .scene import KINDS, RELATIONS, Scene, Thing, relation_holds

ATTRIBUTES = ("colour", "size", "count")  # what a thing has, each a concept alone ("size big")
SETTING = ("place", "time", "weather")    # what the whole picture has ("place park")


def thing_concepts(thing: dict) -> list[str]:
    """What a patch covered by this thing should know: its kind, its kind with each attribute, and
    each attribute alone. Why the last: with only "big duck", "big cat", ... each kind's bigness
    is a feature of its own, and the decoder would have to learn to read it kind by kind; "size
    big" makes the encoder keep one direction for it that every question can read."""
    kind = thing["kind"]
    attrs = {name: thing[name] for name in ATTRIBUTES}
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
    return [f"{name} {scene[name]}" for name in SETTING]


def scene_concepts(record: Record) -> set[str]:
    """Every concept some patch of this record's picture holds."""
    scene = record.scene
    return ({c for t in scene["things"] for c in thing_concepts(t)} | set(setting_concepts(scene))
            | {c for cs in relation_concepts(scene) for c in cs})


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


def scene_targets(record: Record, index: dict[str, int], grid: int) -> torch.Tensor:
    """0/1 targets (grid * grid, concepts): each patch's concepts, from the record's scene graph."""
    t = torch.zeros(grid * grid, len(index))
    t[:, [index[c] for c in setting_concepts(record.scene) if c in index]] = 1
    for thing, rels in zip(record.scene["things"], relation_concepts(record.scene)):
        cols = [index[c] for c in thing_concepts(thing) + rels if c in index]
        for cell in covered_cells(thing["box"], grid):
            t[cell, cols] = 1
    return t


def owns(concept: str) -> bool:
    """Whether a concept of several words is the world's: an attribute or setting ("colour red"),
    or a phrase ending in a kind of thing ("red duck", "left of cat"). One-word concepts are left
    out, because a photo's caption words ("dog", "ball") are the same words."""
    lead, _, last = concept.rpartition(" ")
    return bool(lead) and (lead in ATTRIBUTES or lead in SETTING or last in KINDS)
