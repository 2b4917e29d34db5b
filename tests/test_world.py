"""The picture-book world: lengths, vocabulary, checker round trip, grammar, determinism, bad input."""
import random
from pathlib import Path

import pytest

from tinyvlm.world import (Claim, Scene, contact_sheet, grammatical, make_scene_record, parse_claims, render,
                                sample_scene, split_sentences, verify, words, write_world)
from tinyvlm.errors import TinyVLMError

VOCAB = set((Path(__file__).parents[1] / "tinyvlm/world/vocab.txt").read_text().split())
N_TEXT = N_CHECK = 10_000


@pytest.fixture(scope="module")
def records():
    return [make_scene_record(i, seed=0) for i in range(N_TEXT)]


def all_texts(r):
    e = r.extra
    return (e["short"] + e["long"] + [n["text"] for n in e["negatives"]]
            + [q["question"] + " " + q["answer"] for q in e["questions"]])


def test_lengths(records):
    for r in records:
        assert len(r.extra["short"]) == 3 and len(r.extra["long"]) == 3
        assert r.text == r.extra["short"][0]
        for s in r.extra["short"]:
            assert 20 <= len(words(s)) <= 25, s
        for s in r.extra["long"]:
            assert 60 <= len(words(s)) <= 70, s


def test_every_word_in_vocabulary(records):
    assert 150 <= len(VOCAB) <= 600
    unknown = {w for r in records for t in all_texts(r) for w in words(t)} - VOCAB
    assert not unknown


def test_questions_and_negatives_have_types(records):
    kinds = {q["type"] for r in records[:500] for q in r.extra["questions"]}
    assert {"colour", "count", "where", "exists", "yesno", "size", "next_to", "time", "weather", "place"} <= kinds
    swaps = {n["swap"] for r in records[:500] for n in r.extra["negatives"]}
    assert swaps == {"colour", "size", "count", "relation", "thing"}


def test_descriptions_check_out_true(records):
    for r in records[:N_CHECK]:
        scene = Scene.from_dict(r.scene)
        for text in r.extra["short"] + r.extra["long"]:
            claims = parse_claims(text)
            assert len(claims) >= 3, text
            assert verify(claims, scene) == ["true"] * len(claims), (text, [str(c) for c in claims])


def test_negatives_have_exactly_one_false_claim(records):
    for r in records[:N_CHECK]:
        for n in r.extra["negatives"]:
            assert n["true_text"] in r.extra["short"]
            assert verify(parse_claims(n["text"]), r.scene).count("false") == 1, n


def test_questions_answers_agree_with_checker(records):
    for r in records[:200]:
        for q in r.extra["questions"]:
            if q["type"] == "colour":
                kind = q["question"].split()[-1].rstrip("?")
                claims = parse_claims(f"The {kind} is {q['answer']}.")
                assert "false" not in verify(claims, r.scene)


def test_generated_sentences_are_grammatical(records):
    for r in records[:N_CHECK]:
        for text in r.extra["short"] + r.extra["long"]:
            for s in split_sentences(text):
                assert grammatical(s), s


@pytest.mark.parametrize("bad", ["", "ball the red is I see", "I see a big red", "The dog is next to the",
                                 "blorp zazz frob.", "I see a red ball. I see a box.", "red red red red",
                                 "I see a balls.", "There are two ball."])
def test_ungrammatical(bad):
    assert not grammatical(bad)


def test_grammatical_for_any_thing():
    assert grammatical("I see three purple houses on the white snow.")
    assert grammatical("The fish is next to the boats.")


def test_parser_is_robust():
    scene = sample_scene(random.Random(1))
    for text in ["", "   ", "!!!", "the the ball ball is is red red", "I see a a a", "dog dog dog next to to",
                 "it is", "They are big and", "zzz qqq next to the sky on in above", "two three four balls",
                 "I see a red ball the ball is next to the box it is big", None, 42, "x" * 5000]:
        claims = parse_claims(text)
        assert all(isinstance(c, Claim) for c in claims)
        assert set(verify(claims, scene)) <= {"true", "false", "unverifiable"}


def test_parser_reads_claims():
    claims = parse_claims("i see three big red balls next to the tree it is night no cat")
    assert Claim("count", "ball", "3") in claims and Claim("size", "ball", "big") in claims
    assert Claim("relation", "ball", "next to", "tree") in claims
    assert Claim("scene", "time", "night") in claims and Claim("thing", "cat") not in claims
    assert str(Claim("colour", "ball", "red")) == "the ball is red"


def test_scene_round_trip_and_render():
    scene = sample_scene(random.Random(3))
    again = Scene.from_dict(scene.to_dict())
    assert again == scene
    for size in (64, 128, 224):
        img = render(scene, size)
        assert img.size == (size, size) and img.mode == "RGB"
    assert render(scene, 96).tobytes() == render(again, 96).tobytes()


def test_same_seed_same_files(tmp_path):
    a = write_world(tmp_path / "a", 12, size=48, seed=7, progress=False, workers=1)
    b = write_world(tmp_path / "b", 12, size=48, seed=7, progress=False, workers=2)
    c = write_world(tmp_path / "c", 12, size=48, seed=8, progress=False, workers=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 12 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a.read_bytes() != c.read_bytes()
    assert (tmp_path / "a/images/000000.png").read_bytes() != (tmp_path / "c/images/000000.png").read_bytes()
    sheet = contact_sheet(tmp_path / "a", tmp_path / "sheet.png", n=4)
    assert sheet.exists()


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=-3), dict(n=5, size=16), dict(n=5, size=1000),
                                    dict(n=5, workers=0), dict(n=2.5)])
def test_bad_settings(tmp_path, kwargs):
    with pytest.raises(TinyVLMError):
        write_world(tmp_path / "w", progress=False, **kwargs)


def test_bad_scene_settings():
    with pytest.raises(TinyVLMError):
        sample_scene(random.Random(0), max_things=20)
    with pytest.raises(TinyVLMError):
        Scene.from_dict({"place": "moon"})
    with pytest.raises(TinyVLMError):
        render(sample_scene(random.Random(0)), 8)
