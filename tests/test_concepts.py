"""Concept pretraining: the right targets from a scene or a caption, a stage that teaches the
encoder what held-out pictures hold, and exact resume whether a run stops in either stage."""
import json

import pytest
import torch

from conftest import COLOURS, interrupt_training, make_shapes_dataset
from tinyvlm.concepts import build_vocab, targets
from tinyvlm.data.images import preprocess
from tinyvlm.data.records import Record
from tinyvlm.errors import TinyVLMError
from tinyvlm.world.concepts import covered_cells
from tinyvlm.train import ConceptStage, Trainer, TrainConfig, train

SCENE = {"place": "park", "time": "day", "weather": "sunny", "things": [
    {"kind": "ball", "colour": "red", "size": "small", "count": 1, "box": [0.05, 0.05, 0.2, 0.2]},
    {"kind": "tree", "colour": "green", "size": "big", "count": 2, "box": [0.55, 0.3, 0.95, 0.95]}]}


def _cfg(tmp_path, data, **kw):
    # 256 bytes + 8 special tokens leave 56 merges in 320: enough for each colour to be one token
    base = dict(data=str(data), out=str(tmp_path / "run"), preset="nano", steps=60, batch_size=8, lr=3e-3,
                warmup=5, vocab_size=320, eval_every=20, save_every=15, log_every=5, progress=False,
                concept_pretrain=0.5)
    return TrainConfig(**{**base, **kw})


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_scene_targets_are_per_patch_and_caption_targets_per_picture():
    scene = Record(images=["x.png"], text="", scene=SCENE)
    vocab = build_vocab([scene, scene])
    index = {c: i for i, c in enumerate(vocab)}
    t = targets(scene, index, grid=4)
    assert t.shape == (16, len(vocab))
    assert t[:, index["place park"]].all() and t[:, index["time day"]].all()  # the setting is everywhere
    assert torch.nonzero(t[:, index["red ball"]]).flatten().tolist() == [0]  # the ball sits in the top-left cell
    tree = set(torch.nonzero(t[:, index["2 tree"]]).flatten().tolist())
    assert tree == set(covered_cells(SCENE["things"][1]["box"], 4)) and {10, 11, 14, 15} <= tree and 0 not in tree
    # each attribute alone too, wherever a thing with it sits: one "big" for every kind
    assert set(torch.nonzero(t[:, index["size big"]]).flatten().tolist()) == tree
    assert torch.nonzero(t[:, index["size small"]]).flatten().tolist() == [0]
    assert torch.equal(t[:, index["colour red"]], t[:, index["red ball"]])
    assert torch.equal(t[:, index["count 2"]], t[:, index["2 tree"]])
    assert not t[:, index["red ball"]].bool().logical_and(t[:, index["tree"]].bool()).any()
    # where each thing is from the other, on its own patches: the ball is left of the trees, not above them
    assert torch.nonzero(t[:, index["left of tree"]]).flatten().tolist() == [0]
    assert set(torch.nonzero(t[:, index["right of ball"]]).flatten().tolist()) == tree
    assert not any(c.startswith(("above", "below", "next to", "on ")) for c in vocab)

    cap = [Record(images=[f"{i}.png"], text=f"a {c} dog on the grass") for i, c in enumerate(["red", "red", "blue", "blue"])]
    vocab = build_vocab(cap)
    assert vocab == ["blue", "red"]  # 'dog' and 'grass' are in every caption: they tell no picture apart
    t = targets(cap[0], {c: i for i, c in enumerate(vocab)}, grid=4)
    assert t.tolist() == [0.0, 1.0]


def test_nothing_to_learn_is_a_clear_error():
    with pytest.raises(TinyVLMError, match="nothing to learn"):
        build_vocab([Record(images=["a.png"], text="a the of"), Record(images=["b.png"], text="the")])
    with pytest.raises(TinyVLMError, match="share of the budget"):
        TrainConfig(data="x", out="y", steps=10, concept_pretrain=1.0)
    with pytest.raises(TinyVLMError, match="each stage needs at least one step"):
        TrainConfig(data="x", out="y", steps=2, concept_pretrain=0.2)


def test_the_stage_teaches_the_encoder_colours_it_never_saw_in_those_pictures(tmp_path):
    """Captions name a colour and a shape; after the concept stage alone, the head must name the
    colour of held-out pictures (chance 1/4), so the encoder learned to see colour."""
    data = make_shapes_dataset(tmp_path / "train", n=32, seed=0)
    val = make_shapes_dataset(tmp_path / "val", n=16, seed=1)
    tr = Trainer(_cfg(tmp_path, data, steps=60, val_data=str(val)))
    stage = ConceptStage(tr)
    assert set(COLOURS) <= set(stage.vocab) and "page" not in stage.vocab
    stage.run()
    colours = [stage.index[c] for c in COLOURS]
    right = 0
    with torch.no_grad():
        stage.both.eval()
        for i in range(16):
            x = preprocess(tmp_path / f"val/images/{i:03d}.png", 32)[None]
            scores = stage.head(stage.encoder(x))[0].max(0).values[colours]
            right += list(COLOURS)[scores.argmax()] == list(COLOURS)[i % 4]
    assert right >= 14, right
    logged = [r for r in _metrics(tmp_path / "run") if "val_concept_f1" in r]
    # two of six concepts hold in each picture: saying all six scores F1 0.5, saying none 0
    assert logged[-1]["step"] == 30 and logged[-1]["val_concept_f1"] >= 0.75, logged


@pytest.mark.parametrize("crash_step", [("concepts", 20), (None, 25)])
def test_resume_from_either_stage_reproduces_the_uninterrupted_run(tmp_path, shapes, monkeypatch, crash_step):
    train(_cfg(tmp_path / "a", shapes))
    straight = _metrics(tmp_path / "a" / "run")
    assert [r["step"] for r in straight if r.get("stage") == "concepts"][-1] == 30

    interrupt_training(monkeypatch, _cfg(tmp_path / "b", shapes), lambda row: (row.get("stage"), row["step"]) == crash_step)
    with pytest.raises(TinyVLMError, match="different config"):
        train(_cfg(tmp_path / "b", shapes, concept_pretrain=0.25), resume=True)
    train(_cfg(tmp_path / "b", shapes), resume=True)
    resumed = _metrics(tmp_path / "b" / "run")
    assert [(r.get("stage"), r["step"]) for r in resumed] == [(r.get("stage"), r["step"]) for r in straight]
    for a, b in zip(straight, resumed):
        key = next(k for k in ("concept_loss", "val_concept_loss", "loss", "val_loss") if k in a)
        assert b[key] == pytest.approx(a[key], abs=1e-4)


def test_a_frozen_encoder_leaves_the_vlm_stage_exactly_as_the_concept_stage_left_it(tmp_path, shapes, monkeypatch):
    """--freeze-encoder: weights and batch-norm statistics unchanged through the VLM stage, also
    across a resume, while the decoder learns; and it needs a concept stage to freeze."""
    from safetensors.torch import load_file
    with pytest.raises(TinyVLMError, match="needs concept_pretrain"):
        TrainConfig(data="x", out="y", steps=10, freeze_encoder=True)
    cfg = _cfg(tmp_path, shapes, stem="conv", freeze_encoder=True)
    interrupt_training(monkeypatch, cfg, lambda row: row.get("stage") is None and row["step"] == 25)
    train(cfg, resume=True)
    run = tmp_path / "run"
    stage = {k[len("encoder."):]: v for k, v in load_file(run / "concepts/encoder_and_head.safetensors").items()
             if k.startswith("encoder.")}
    final = {k[len("vision."):]: v for k, v in load_file(run / "checkpoint/model.safetensors").items()
             if k.startswith("vision.")}
    assert any("running_mean" in k for k in stage) and stage.keys() == final.keys()
    assert all(torch.equal(stage[k], final[k]) for k in stage)
    losses = [r["loss"] for r in _metrics(run) if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_frozen_encoder_is_run_once_per_picture_and_the_losses_stay_as_they_were(tmp_path, shapes, monkeypatch):
    """With the encoder frozen, the VLM stage keeps each picture's encoding (EncoderCache): the
    encoder sees each training picture about once, not once an epoch, and every logged loss is
    the one a run that encodes every batch gets."""
    import tinyvlm.train.stages as stages
    seen = []
    real = stages.EncoderCache

    class Counting(real):
        def __call__(self, paths, pixels):
            seen.extend(p for p in paths if p not in self.store)
            return super().__call__(paths, pixels)

    monkeypatch.setattr(stages, "EncoderCache", Counting)
    train(_cfg(tmp_path / "kept", shapes, stem="conv", freeze_encoder=True))
    monkeypatch.setattr(stages, "EncoderCache", lambda encoder: None)  # the encoder runs every step
    train(_cfg(tmp_path / "every", shapes, stem="conv", freeze_encoder=True))
    kept, every = (_metrics(tmp_path / name / "run") for name in ("kept", "every"))
    rows = [(a, b) for a, b in zip(kept, every) if a.get("stage") is None and ("loss" in a or "val_loss" in a)]
    assert len(rows) > 5 and len(kept) == len(every)
    for a, b in rows:
        key = "loss" if "loss" in a else "val_loss"
        assert a[key] == pytest.approx(b[key], rel=1e-5)
    vlm_samples = 30 * 8  # the VLM stage's half of 60 steps, batch 8
    assert len(set(seen)) == len(seen) and len(seen) < vlm_samples / 2


def test_a_frozen_run_keeps_its_concept_head_and_grounded_decoding_never_names_what_it_rates_unseen(tmp_path):
    """With --freeze-encoder the head still reads the final encoder, so the checkpoint keeps it;
    Sampling(ground=p) then bans each concept word the head rates below p in that picture. On
    held-out pictures of one colour: the true colour is kept, the other colours are banned, and
    no banned word is written. A run whose encoder went on training keeps no head, and asking it
    to ground is a clear error."""
    from tinyvlm.api import TinyVLM
    from tinyvlm.concepts import word_tokens
    from tinyvlm.generate import Sampling
    data = make_shapes_dataset(tmp_path / "train", n=32, seed=0)
    make_shapes_dataset(tmp_path / "val", n=8, seed=1)
    train(_cfg(tmp_path / "frozen", data, stem="conv", freeze_encoder=True))
    vlm = TinyVLM.from_pretrained(tmp_path / "frozen" / "run")
    assert vlm.concept_head is not None and set(COLOURS) <= set(vlm.concepts)
    # a word the tokenizer splits cannot be banned alone: score the colours that are one token
    ids = {c: word_tokens(vlm.tokenizer, c) for c in COLOURS if word_tokens(vlm.tokenizer, c)}
    assert len(ids) >= 3, ids
    images = [str(tmp_path / f"val/images/{i:03d}.png") for i in range(8)]
    truth = [list(COLOURS)[i % 4] for i in range(8)]
    banned = vlm.grounding(vlm.pixels(images), [1] * 8, threshold=0.3).anywhere
    true_banned = [bool(banned[i, ids[c]].any()) for i, c in enumerate(truth) if c in ids]
    wrong_banned = [bool(banned[i, ids[c]].all()) for i, t in enumerate(truth) for c in ids if c != t]
    assert sum(true_banned) <= 1 and sum(wrong_banned) >= 0.8 * len(wrong_banned), (true_banned, wrong_banned)
    texts = vlm.describe(images, sampling=Sampling(max_new_tokens=12, ground=0.3))
    for i, text in enumerate(texts):
        written = set(vlm.tokenizer.encode_text(text))
        assert not written & set(torch.nonzero(banned[i]).flatten().tolist()), (text, truth[i])
    contexts, grounding = [], vlm.grounding  # the rules read the text a row already holds
    vlm.grounding = lambda *a: contexts.append(a[3]) or grounding(*a)
    vlm.ask(images[0], "What colour is it?", Sampling(max_new_tokens=2, ground=0.3))
    vlm.describe(images[0], prefix="I see a", sampling=Sampling(max_new_tokens=2, ground=0.3))
    assert contexts == [["What colour is it?"], ["Describe the picture. I see a"]]

    train(_cfg(tmp_path / "free", data))
    free = TinyVLM.from_pretrained(tmp_path / "free" / "run")
    assert free.concept_head is None
    with pytest.raises(TinyVLMError, match="concept head"):
        free.describe(images[0], sampling=Sampling(ground=0.3))
    with pytest.raises(TinyVLMError, match="ground"):
        Sampling(ground=1.5)


def test_grounding_bans_by_context_what_the_head_does_not_see_there():
    """Two patches: a red duck left of two cats, and the cats; no ball. A word is banned anywhere
    when no patch holds it, and after a concept's leading words when no patch holds the whole
    concept (a relation at a patch of the sentence's subject), unless nothing would be left to
    name; a relation or count word is banned before it is written when nothing could complete it."""
    from tinyvlm.world.grounding import WorldGrounding
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train(["I see a red duck to the left of two cats and a ball. I see ducks. It is sunny, not rainy."] * 20, 400)
    concepts = ["ball", "cat", "duck", "2 cat", "2 duck", "red cat", "red duck", "left of cat", "left of duck",
                "count 2", "weather rainy", "weather sunny"]
    probs = torch.zeros(2, len(concepts))
    probs[0, [2, 6, 7, 10]] = 0.9     # patch 0: a red duck, left of the cats, in the rain
    probs[1, [1, 3, 9, 10]] = 0.9     # patch 1: two cats, in the rain
    g = WorldGrounding([probs], concepts, tok, threshold=0.5, vocab_size=tok.vocab_size)
    word = {w: tok.encode(f" {w}")[0] for w in ("ball", "cat", "duck", "ducks", "to", "left", "two", "sunny", "rainy")}
    assert all(len(tok.encode(f" {w}")) == 1 for w in word)

    def banned_after(text, sure_of=None):
        logits = torch.zeros(1, tok.vocab_size)
        if sure_of:  # the model all but certain of its next word
            logits[0, word[sure_of]] = 20.0
        row = g(torch.tensor([tok.encode_text(text)]), logits)[0]
        assert row[word["sunny"]] and not row[word["rainy"]]  # an attribute's value, anywhere
        return {w for w, i in word.items() if row[i]} - {"sunny"}

    assert banned_after("I see a") == {"ball"}
    assert banned_after("I see a red") == {"ball", "cat", "to", "left", "two"}  # no red cat; the red duck is one, left of none
    assert banned_after("I see two") == {"ball", "duck", "ducks"}               # two cats, one duck
    assert banned_after("I see two red") == {"ball", "to", "left"}              # committed: nothing fits, no thing banned
    assert banned_after("I see a duck to the left of a") == {"ball", "duck", "ducks"}  # of the cats
    assert banned_after("I see a cat") == {"ball", "to", "left"}                # the cats are left of nothing
    assert banned_after("I see a cat to the") == {"ball", "to", "left"}         # said "to the": still not "left"
    assert banned_after("I see a cat to the", sure_of="left") == {"ball"}       # ... unless nothing else would do
    assert banned_after("I see a cat. It is to the left of the") == {"ball", "duck", "ducks"}  # no subject: any patch
    assert banned_after("It is red. I see a") == {"ball"}                       # a new sentence starts afresh


def test_grounding_checks_what_is_said_of_the_subject_a_question_asks_about_or_a_relation_names():
    """Two patches: one red duck, and two blue cats next to it. After "the duck is", and in the
    answer to a question about the duck, only the duck's colour and count may be said; the object
    of a relation is not the subject ("what is next to the duck?" asks about the cats). A
    combination the training scenes never held ("red cat") counts as absent, a thing is never
    where it is itself, and once a thing must be named, no word may leave none to name. If the
    head backs no value of an attribute, that attribute is left to the model."""
    from tinyvlm.world.grounding import WorldGrounding
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train(["What colour is the duck? red. How many cats are there? two, one. "
                           "The duck is red and the cats are blue. I see a blue cat next to a duck."] * 20, 400)
    concepts = ["cat", "duck", "blue cat", "blue duck", "red duck", "1 duck", "2 cat",
                "next to cat", "next to duck", "colour blue", "colour red", "count 1", "count 2"]
    probs = torch.zeros(2, len(concepts))
    probs[0, [1, 4, 5, 7, 10, 11]] = 0.9   # patch 0: a red duck, next to the cats
    probs[1, [0, 2, 6, 8, 9, 12]] = 0.9    # patch 1: two blue cats, next to the duck
    unsure = probs.clone()
    unsure[:, 2] = 0.1                     # the head cannot tell the cats' colour
    crowded = probs.clone()
    crowded[1, 7] = 0.9                    # where things overlap, a cat's patch is also "next to cat"
    word = {w: tok.encode(f" {w}")[0] for w in ("cat", "cats", "duck", "red", "blue", "one", "two")}
    assert all(len(tok.encode(f" {w}")) == 1 for w in word)

    def banned_after(text, context="", p=probs):
        g = WorldGrounding([p], concepts, tok, threshold=0.5, vocab_size=tok.vocab_size, context=[context])
        row = g(torch.tensor([tok.encode_text(text)]), torch.zeros(1, tok.vocab_size))[0]
        return {w for w, i in word.items() if row[i]}

    assert banned_after("The duck is") == {"blue", "two"}                  # said of the duck: red, one
    assert banned_after("The cats are") == {"red", "one"}
    assert banned_after("The cats are", p=unsure) == {"one"}               # no colour backed: left alone
    assert banned_after("", "What colour is the duck?") == {"blue", "two"}  # the answer is about the duck
    assert banned_after("", "How many cats are there?") == {"red", "one"}
    assert banned_after("", "What is next to the duck?") == set()          # the duck is the object here
    assert banned_after("I see a red") == {"cat", "cats", "two"}           # "red cat" never seen: absent
    assert banned_after("a", "I see a red") == banned_after("I see a red a")  # a prefix counts as said
    assert banned_after("The duck is next to the") == {"duck", "red", "one"}
    assert banned_after("The cats are next to the", p=crowded) == {"cat", "cats", "blue", "two"}  # not next to itself
    assert banned_after("I see two") == {"duck", "red", "one"}             # a "2" thing must follow: no red one
