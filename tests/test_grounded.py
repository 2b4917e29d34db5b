"""The offline rubric: ground truth earns full marks, each kind of mistake costs what the formulas say."""
from __future__ import annotations

import random
import re

import pytest

from tinyvlm.world import COLOURS, make_scene_record, parse_claims, verify
from tinyvlm.eval.rubric import RUBRIC
from tinyvlm.world.judge import judge_grounded, score_description

RECORDS = [make_scene_record(i) for i in range(50)]


def n_verifiable(text: str, scene: dict) -> int:
    return sum(v != "unverifiable" for v in verify(parse_claims(text), scene))


@pytest.mark.parametrize("style", ["long", "short"])
def test_ground_truth_is_fully_consistent_and_meaningful(style):
    for r in RECORDS[:8]:
        for text in r.extra[style]:
            s = score_description(text, r.scene, r.extra[style])
            assert s.consistency == 10 and s.meaningfulness == 10, text
            assert s.n_false == 0 and s.precision == 1 and s.things_hallucinated == 0
            assert s.grammar > 9 and s.creativity > 5


def test_one_swapped_colour_costs_exactly_one_claim():
    tried = 0
    for r in RECORDS:
        text, scene = r.extra["long"][0], r.scene
        for m in re.finditer(r"\b(" + "|".join(COLOURS) + r")\b", text):
            new = next(c for c in COLOURS if c != m[1])
            swapped = text[:m.start()] + new + text[m.end():]
            if n_verifiable(swapped, scene) != n_verifiable(text, scene):
                continue  # the colour of a region ("green grass") or one said twice: not one claim changed
            if parse_claims(swapped) == parse_claims(text):
                continue
            n = n_verifiable(text, scene)
            s = score_description(swapped, scene, r.extra["long"])
            assert s.n_false == 1
            assert s.consistency == pytest.approx(10 - 10 / n)
            tried += 1
            break
    assert tried >= 10


def test_hard_negatives_make_exactly_one_claim_false():
    for r in RECORDS[:10]:
        for neg in r.extra["negatives"]:
            s = score_description(neg["text"], r.scene, r.extra["short"])
            assert s.consistency < 10 and s.n_false == 1, neg
            assert s.things_hallucinated == (neg["swap"] == "thing")


def test_gibberish_and_loops_score_low():
    r = RECORDS[0]
    vocab = open("tinyvlm/world/vocab.txt").read().split()
    rng = random.Random(0)
    salad = ". ".join(" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9))) for _ in range(8)) + "."
    for text in ("ball ball the the red sky sky blue.", salad):
        s = score_description(text, r.scene, r.extra["long"])
        assert s.grammar < 3 and s.plot < 3 and s.creativity < 3, text

    scene = r.scene
    t = scene["things"][0]
    line = f"I see a {t['colour']} {t['kind']}."
    loop = score_description(" ".join([line] * 3), scene, "")
    assert loop.precision == 1  # every claim is true, and still it is a poor story
    assert loop.grammar <= 10 / 3 + 1e-9 and loop.creativity < 4 and loop.plot == 0 and loop.repetition > 0.5
    truncated = score_description(" ".join([line] * 3)[:-6], scene, "")
    assert truncated.grammar < 5 and truncated.repetition > 0.5
    gt = score_description(r.extra["long"][0], scene, "")
    assert gt.repetition < 0.2 and gt.creativity > 2 * loop.creativity


def test_unrelated_sentences_have_little_plot():
    r = RECORDS[0]
    listing = "I see a red ball. There is a dog. Look at a blue boat! I can see a yellow kite. Here is a cat."
    assert score_description(listing, r.scene, r.extra["long"]).plot < 4


def test_naming_an_absent_thing_is_a_hallucination():
    r = RECORDS[0]
    kinds = {t["kind"] for t in r.scene["things"]}
    present = r.scene["things"][0]
    absent = next(k for k in ("ball", "dog", "boat", "car", "cat") if k not in kinds)
    text = f"I see a {present['kind']}. There is a {absent}."
    s = score_description(text, r.scene, r.extra["short"])
    assert (s.things_mentioned, s.things_hallucinated, s.n_false) == (2, 1, 1)
    out = judge_grounded([{"id": "x", "text": text, "scene": r.scene, "reference": r.extra["short"][0]}])
    assert out["raw"]["hallucination_per_description"] == 1
    assert out["raw"]["hallucination_per_thing"] == 0.5


def test_claims_in_the_prefix_are_not_the_models():
    r = RECORDS[1]
    text = r.extra["long"][0]
    cut = text.index(".") + 1
    prefix, all_claims = text[:cut], parse_claims(text)
    s = score_description(text, r.scene, r.extra["long"], prefix=prefix)
    assert 0 < len(parse_claims(prefix)) and s.n_claims == len(all_claims) - len(set(parse_claims(prefix)))
    assert not {c for c, _ in s.claims} & {str(c) for c in parse_claims(prefix)}
    assert s.consistency == 10 and s.meaningfulness == 10
    # a false claim in the given words is not the model's fault
    bad_prefix = re.sub(r"\b(day|night)\b", lambda m: "night" if m[1] == "day" else "day", prefix, count=1)
    assert bad_prefix != prefix
    rest = text[cut:]
    s = score_description(bad_prefix + rest, r.scene, r.extra["long"], prefix=bad_prefix)
    assert s.n_false == 0
    # the continuation alone says nothing the prefix had not: no credit for recall
    s = score_description(prefix, r.scene, r.extra["long"], prefix=prefix)
    assert s.n_claims == 0 and s.consistency == 0 and s.meaningfulness == 0


def test_self_contradiction_zeroes_consistency():
    r = next(r for r in RECORDS if r.scene["time"] == "day")
    s = score_description(r.extra["long"][0] + " It is night.", r.scene, r.extra["long"])
    assert s.consistency == 0 and s.n_false == 1


def test_judge_on_ground_truth():
    items = [{"id": k, "text": r.extra["long"][k % 3], "scene": r.scene, "reference": r.extra["long"]}
             for k, r in enumerate(RECORDS)]
    out = judge_grounded(items)
    assert len(out["items"]) == 50 and out["items"][3]["id"] == 3 and set(out["mean"]) == set(RUBRIC)
    assert out["mean"]["consistency"] == 10 and out["mean"]["meaningfulness"] == 10
    assert out["mean"]["plot"] >= 8 and out["mean"]["grammar"] > 9
    raw = out["raw"]
    assert raw["novelty"] is None
    for key in ("claim_precision", "claim_recall", "hallucination_per_thing", "hallucination_per_description",
                "attribute_accuracy", "count_accuracy", "relation_accuracy", "repetition_rate", "distinct_outputs"):
        assert 0 <= raw[key] <= 1, key
    assert raw["claim_precision"] == 1 and raw["hallucination_per_thing"] == 0 and raw["distinct_outputs"] == 1


def test_novelty_from_training_texts():
    r = RECORDS[2]
    items = [{"id": "copy", "text": r.extra["long"][0], "scene": r.scene, "reference": r.extra["long"][0]},
             {"id": "new", "text": r.extra["short"][0], "scene": r.scene, "reference": r.extra["short"][0]}]
    out = judge_grounded(items, training_texts=[r.extra["long"][0], RECORDS[3].extra["long"][0]])
    copy, new = out["items"]
    assert copy["novelty"] == 0 and new["novelty"] > 0
    assert copy["creativity"] < score_description(r.extra["long"][0], r.scene, r.extra["long"][0]).creativity
    assert out["raw"]["novelty"] == pytest.approx(new["novelty"] / 2)
