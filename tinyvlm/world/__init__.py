"""The picture-book world: seeded scenes, their pictures, and words that can be checked against them.

    scene = sample_scene(random.Random(0))
    image = render(scene, 128)
    words = describe(scene, random.Random(0))          # short, long, questions, negatives
    verify(parse_claims(words["short"][0]), scene)      # ["true", "true", ...]
    write_world("data/world", n=10_000, size=64)        # images/ + world.jsonl
"""
from .checker import Claim, grammatical, parse_claims, split_sentences, verify
from .describe import describe, words
from .render import render
from .scene import COLOURS, KINDS, PLACES, RELATIONS, Scene, Thing, relation_holds, sample_scene
from .writer import VERSION, contact_sheet, make_scene_record, write_world

__all__ = ["Claim", "COLOURS", "KINDS", "PLACES", "RELATIONS", "Scene", "Thing", "VERSION", "contact_sheet",
           "describe", "grammatical", "make_scene_record", "parse_claims", "relation_holds", "render",
           "sample_scene", "split_sentences", "verify", "words", "write_world"]
