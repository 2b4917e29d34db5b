"""Caption metrics through pycocoevalcap, our ROUGE-L, and the memorisation check."""
from __future__ import annotations

import random
import shutil
import time

import pytest
from pycocoevalcap.rouge.rouge import Rouge, my_lcs

from tinyvlm.eval.captions import caption_metrics, memorisation, rouge_l
from tinyvlm.eval.memorisation import lcs_length, simple_tokenize

REFS = {"1": ["A dog runs on the grass.", "A brown dog running across a field."],
        "2": ["A man rides a bike down the street.", "A person on a bicycle in the city."],
        "3": ["Two girls play in the snow.", "Children playing outside in the snow."],
        "4": ["A plate with pizza on a table.", "A pizza sits on a white plate."]}
PERFECT = {k: v[0] for k, v in REFS.items()}
WRONG = {"1": "A cat sleeps on a bed.", "2": "The sky is blue today.",
         "3": "A boat on the water.", "4": "An old clock on the wall."}


def test_perfect_beats_wrong_without_java():
    good = caption_metrics(PERFECT, REFS, use_java=False)
    bad = caption_metrics(WRONG, REFS, use_java=False)
    assert good["tokenizer"] == "simple" and "METEOR" in good["skipped"] and "METEOR" not in good
    assert good["BLEU-4"] > 0.99 and good["ROUGE-L"] == pytest.approx(1.0)
    for metric in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert good[metric] > bad[metric], metric
    assert good["CIDEr"] > 1 and bad["BLEU-4"] < 0.01


def test_missing_java_is_reported(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = caption_metrics(PERFECT, REFS)
    assert result["tokenizer"] == "simple" and "java not found" in result["skipped"]["METEOR"]


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR and the PTB tokenizer need Java")
def test_meteor_and_ptb_with_java():
    result = caption_metrics(PERFECT, REFS)
    assert result["tokenizer"] == "ptb" and result["skipped"] == {}
    assert result["METEOR"] > 0.9 and result["BLEU-4"] > 0.99 and result["n"] == 4


def test_mismatched_ids_are_a_clear_error():
    from tinyvlm.errors import TinyVLMError
    with pytest.raises(TinyVLMError, match="different ids"):
        caption_metrics({"1": "a dog"}, REFS)


def test_rouge_l_known_values_and_agrees_with_pycocoevalcap():
    assert rouge_l("A dog runs on the grass.", "a dog runs on the grass") == pytest.approx(1.0)
    assert rouge_l("a cat", "the dog") == 0.0
    assert rouge_l("", "a dog") == 0.0
    # LCS("a dog runs", "a big dog") = 2; P = R = 2/3, so F = 2/3 for any beta
    assert rouge_l("a dog runs", "a big dog") == pytest.approx(2 / 3)
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abcde") for _ in range(rng.randint(1, 30))]
        b = [rng.choice("abcde") for _ in range(rng.randint(1, 30))]
        assert lcs_length(a, b) == my_lcs(a, b)
        assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(Rouge().calc_score([" ".join(a)], [" ".join(b)]))


def test_memorisation_finds_copies_and_is_fast():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)] + "a the dog cat runs on in grass red big".split()
    training = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) for _ in range(50_000)]
    copied = training[:500]
    novel = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(500)]
    start = time.monotonic()
    results = memorisation(copied + novel, training)
    assert time.monotonic() - start < 20
    assert all(r["rouge_l"] == pytest.approx(1.0) for r in results[:500])
    assert [r["nearest"] for r in results[:10]] == training[:10]
    assert all(r["rouge_l"] < 1.0 for r in results[500:])


def test_memorisation_small_example():
    training = ["a dog runs on the grass", "a man rides a red bike", "two girls play in the snow"]
    exact, near, novel = memorisation(["A man rides a red bike.", "a girl plays in the snow", "purple sky"], training)
    assert exact == {"rouge_l": pytest.approx(1.0), "nearest": "a man rides a red bike"}
    assert near == {"rouge_l": pytest.approx(0.5), "nearest": "two girls play in the snow"}  # LCS "in the snow"
    assert novel["rouge_l"] == 0.0
    assert simple_tokenize("A dog's ball, red!") == ["a", "dog's", "ball", "red"]
