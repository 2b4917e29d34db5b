"""Training: a nano model learns a tiny dataset; interrupted runs resume exactly; bad resumes fail."""
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from conftest import interrupt_training, make_shapes_dataset
from tinyvlm.api import TinyVLM
from tinyvlm.errors import TinyVLMError
from tinyvlm.train import TrainConfig, train


def _cfg(tmp_path, data, **kw):
    base = dict(data=str(data), out=str(tmp_path / "run"), preset="nano", steps=60, batch_size=8, lr=3e-3,
                warmup=5, vocab_size=300, eval_every=20, save_every=30, log_every=5, progress=False)
    return TrainConfig(**{**base, **kw})


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_nano_learns_to_see(tmp_path):
    """32 pictures, 4 colours x 2 shapes. A model blind to the image can at best spend ln4 + ln2
    nats per caption guessing colour and shape; we require well under half of that per target
    token on held-out pictures, so the model must be reading the image."""
    train_file = make_shapes_dataset(tmp_path / "train", n=32, seed=0)
    val_file = make_shapes_dataset(tmp_path / "val", n=16, seed=1)
    vlm = train(_cfg(tmp_path, train_file, val_data=str(val_file), steps=150, batch_size=16, eval_every=50))
    n_target = len(vlm.tokenizer.encode_text("a red square on a white page.")) + 1  # + <|eos|>
    blind = (math.log(4) + math.log(2)) / n_target
    val = [r["val_loss"] for r in _metrics(tmp_path / "run") if "val_loss" in r]
    assert val[-1] < 0.5 * blind, (val, blind)
    assert vlm.describe(str(tmp_path / "val/images/002.png")) == "a blue square on a white page."
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_reproduces_the_uninterrupted_run(tmp_path, shapes, monkeypatch):
    train(_cfg(tmp_path / "a", shapes))
    straight = _metrics(tmp_path / "a" / "run")

    interrupt_training(monkeypatch, _cfg(tmp_path / "b", shapes), lambda row: row["step"] == 45)
    train(_cfg(tmp_path / "b", shapes), resume=True)
    resumed = _metrics(tmp_path / "b" / "run")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(straight, resumed):
        key = "loss" if "loss" in a else "val_loss"
        assert b[key] == pytest.approx(a[key], abs=1e-4)


def test_resume_with_a_different_config_is_refused(tmp_path, shapes):
    train(_cfg(tmp_path, shapes, steps=10, save_every=10))
    with pytest.raises(TinyVLMError, match="lr was 0.003, now 0.01"):
        train(_cfg(tmp_path, shapes, steps=10, lr=1e-2), resume=True)
    with pytest.raises(TinyVLMError, match="already holds a training run"):
        train(_cfg(tmp_path, shapes, steps=10))


def test_minutes_budget_becomes_a_fixed_step_count(tmp_path, shapes):
    train(_cfg(tmp_path, shapes, steps=None, minutes=0.05))
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["total_steps"] >= 1 and state["elapsed"] < 0.05 * 60 * 1.5
    assert TinyVLM.from_pretrained(tmp_path / "run").cfg.vit_image_size == 32


def test_config_errors_are_clear(tmp_path, shapes):
    with pytest.raises(TinyVLMError, match="training budget"):
        TrainConfig(data=str(shapes), out=str(tmp_path), preset="nano")
    with pytest.raises(TinyVLMError, match="unknown preset 'tiny'"):
        TrainConfig(data=str(shapes), out=str(tmp_path), preset="tiny", steps=1)
    with pytest.raises(TinyVLMError, match="dataset not found"):
        train(_cfg(tmp_path, tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TinyVLMError, match="empty"):
        train(_cfg(tmp_path, tmp_path / "empty.jsonl"))


def test_stream_with_every_record_held_out_fails_instead_of_spinning(shapes):
    from tinyvlm.data.dataset import open_records
    from tinyvlm.train import Stream
    cfg = TrainConfig(data=str(shapes), out="unused", preset="nano", steps=1)
    with pytest.raises(TinyVLMError, match="no training records left"):
        next(iter(Stream(open_records(shapes), cfg, skip=lambda r: True)))


def test_each_step_teaches_one_task_so_batches_are_not_padding(tmp_path):
    """Picture-book records teach a short description, a story or an answer. Drawn per record,
    nearly every batch holds a story and pads the rest to its length; one task a step keeps a
    batch's sequences alike, so all three tasks still take their turn with little padding."""
    from tinyvlm.data.batches import PROMPTS, record_to_example
    from tinyvlm.world import write_world
    from tinyvlm.tokenizer import PAD_ID
    from tinyvlm.train import Stream, Trainer, VLMStage
    data = write_world(tmp_path / "w", 64, size=32, seed=0, progress=False, workers=1)
    tr = Trainer(_cfg(tmp_path, data, tasks=("short", "long", "qa"), batch_size=16))
    stage = VLMStage(tr)
    records = iter(Stream(tr.train_src, tr.cfg))
    padding = []
    for step, task in enumerate(["short", "long", "qa", "short"]):
        examples = stage.batch_examples(records, step)
        prompts = {e.prompt.split("> ", 1)[-1] for e in examples}
        if task == "qa":
            assert not prompts & set(PROMPTS.values())  # questions only
        else:
            assert prompts == {PROMPTS[task]}
        ids = tr.collate(examples)["input_ids"]
        padding.append((ids == PAD_ID).float().mean().item())
    assert max(padding) < 0.25, padding
    mixed = [record_to_example(r, rng) for r, rng in (next(records) for _ in range(16))]
    assert (tr.collate(mixed)["input_ids"] == PAD_ID).float().mean() > 0.35  # what one task a step saves


def test_training_and_import_split_by_the_same_ranking():
    """One validation split: the pictures training holds out while streaming are exactly the lowest
    ranks the importer takes when asked for that many; another seed picks other pictures."""
    from tinyvlm.data.dataset import held_out, pick_validation
    from tinyvlm.data.records import Record
    keys = [f"{i:04x}.png" for i in range(2000)]
    streamed = {k for k in keys if held_out(Record(images=[f"some/dir/{k}"], text=""))}
    assert 60 < len(streamed) < 140  # about 5%
    assert pick_validation(reversed(keys), len(streamed) / len(keys)) == streamed
    assert pick_validation(keys, len(streamed) / len(keys), seed=1) != streamed
    assert pick_validation(["a.png", "b.png"], 0.01) in ({"a.png"}, {"b.png"})  # one each side


def test_augmentation_is_drawn_afresh_for_each_micro_batch(tmp_path, shapes, monkeypatch):
    """With --augment and --grad-accum 2, the two micro-batches of a step are jittered differently,
    and every step differently again."""
    import copy

    from tinyvlm.data.batches import Collator
    draws, real = [], Collator.__call__

    def spy(self, examples, rng=None, **kw):
        if rng is not None:
            draws.append(copy.deepcopy(rng).random())  # the first number this batch's jitter draws
        return real(self, examples, rng, **kw)

    monkeypatch.setattr(Collator, "__call__", spy)
    train(_cfg(tmp_path, shapes, steps=3, batch_size=4, grad_accum=2, augment=True))
    assert len(draws) == 6 and len(set(draws)) == 6, draws


def _painted():
    """A 32 px picture of saturated red, green and blue stripes on white (grey has no hue to turn)."""
    import numpy as np
    from PIL import Image
    a = np.full((32, 32, 3), 255, np.uint8)
    a[4:12, 4:28], a[12:20, 4:28], a[20:28, 4:28] = (220, 30, 30), (30, 200, 40), (30, 40, 220)
    return Image.fromarray(a)


def test_colour_augment_never_touches_a_picture_whose_text_names_a_colour():
    """--augment colour: a text naming a colour gets exactly the light jitter (same draws, same
    pixels); a text naming none gets its hue turned too; both are seeded."""
    import random

    import numpy as np

    from tinyvlm.data.images import augment
    img = _painted()
    px = lambda im: np.asarray(im).astype(int)  # noqa: E731
    for seed in range(5):
        light = px(augment(img, random.Random(seed)))
        assert (px(augment(img, random.Random(seed), "colour", "a red ball and a blue kite")) == light).all()
        turned = px(augment(img, random.Random(seed), "colour", "How many balls are there? two"))
        assert (turned == px(augment(img, random.Random(seed), "colour", "two balls"))).all()  # seeded
        assert np.abs(turned - light).max() > 40, seed  # the stripes changed colour, not just a little
        grey = light.max(-1) - light.min(-1) < 8  # the white page stays as it is (it has no hue)
        assert grey.sum() > 100 and np.abs(turned - light)[grey].max() <= 12
    assert (px(augment(img, random.Random(0), "colour")) != px(augment(img, random.Random(1), "colour"))).any()


def test_what_names_a_colour_errs_toward_yes():
    """Case, punctuation, -ish forms and words that start with a basic term count ("bluebird":
    turned orange, its caption is false); words that only end in a colour's letters do not."""
    from tinyvlm.data.images import names_colour
    for text in ("RED.", "a Grey-ish dog", "a reddish wall", "a bluish sky", "a redheaded girl",
                 "man in bluejeans", "a bluebird", "a brunette woman", "neon vest"):
        assert names_colour(text), text
    assert names_colour("What colour are the balls? purple") and names_colour("A man in a Red shirt.")
    assert names_colour("A redhead reads; the bluest sky") and names_colour("a blond boy")
    for text in ("How many balls are there? two", "a dog on grass", "a covered tank", "two tired cats", ""):
        assert not names_colour(text), text


def test_colour_augment_turns_the_pictures_of_one_example_alike(tmp_path):
    """An in-context "Do they match? yes" of two red things must stay true: the collator draws
    one hue and saturation per example (the crop and brightness stay each picture's own)."""
    import random

    import numpy as np

    from tinyvlm.config import get_preset
    from tinyvlm.data.batches import Collator, Example
    from tinyvlm.tokenizer import Tokenizer
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "red.png")
    cfg = get_preset("nano", vit_image_size=32, lm_vocab_size=512)
    collate = Collator(Tokenizer.train(["Do they match? yes"], 300), cfg)
    ex = Example([str(tmp_path / "red.png")] * 2, "<image> <image> Do they match?", "yes")
    apart = lambda a, b: min((a - b) % 256, (b - a) % 256)  # noqa: E731 - hues are a circle
    turned = 0
    for seed in range(5):
        pics = collate([ex], random.Random(seed), augment_mode="colour")["images"]
        rgb = [np.uint8((p.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255) for p in pics]
        hues = [Image.fromarray(a).convert("HSV").getpixel((16, 16))[0] for a in rgb]
        assert apart(*hues) <= 2, (seed, hues)
        turned += apart(hues[0], 2) > 20  # red's hue is ~2
    assert turned >= 3


def test_augment_reads_any_picture_mode_as_rgb_and_refuses_an_unknown_mode():
    """A palette's indices, 16-bit levels or an alpha channel are not colours to scale: augment
    reads every mode as to_rgb does, in both modes, and returns RGB."""
    import random

    import numpy as np

    from tinyvlm.data.images import augment, to_rgb
    img = _painted()
    for im in (img.convert("P"), img.convert("L"), img.convert("RGBA"), img.convert("CMYK"),
               Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)):
        for mode in ("light", "colour"):
            out = augment(im, random.Random(0), mode)
            same = augment(to_rgb(im), random.Random(0), mode)
            assert out.mode == "RGB" and (np.asarray(out) == np.asarray(same)).all(), (im.mode, mode)
    with pytest.raises(TinyVLMError, match="unknown augment mode 'color'"):
        augment(img, random.Random(0), "color")


def test_augment_modes_in_the_config_and_on_the_command_line(tmp_path):
    """True (old runs' training.json) means light and resumes as light; a bare --augment is light."""
    from tinyvlm.cli import build_parser
    assert _cfg(tmp_path, "d", augment=True).augment == "light"
    assert _cfg(tmp_path, "d", augment="colour").augment == "colour"
    _cfg(tmp_path, "d", augment="light").check_resumable({**_cfg(tmp_path, "d", augment=True).comparable(), "augment": True})
    with pytest.raises(TinyVLMError, match="augment was 'light', now 'colour'"):
        _cfg(tmp_path, "d", augment="colour").check_resumable(_cfg(tmp_path, "d", augment=True).comparable())
    with pytest.raises(TinyVLMError, match="augment must be"):
        _cfg(tmp_path, "d", augment="strong")
    with pytest.raises(TinyVLMError, match="the saved run's augment is 'strong'"):
        _cfg(tmp_path, "d", augment="light").check_resumable({"augment": "strong"})
    parse = lambda *a: build_parser().parse_args(["train", "--data", "d", "--out", "o", "--steps", "1", *a])  # noqa: E731
    assert parse("--augment").augment == "light" and parse("--augment", "colour").augment == "colour"
    assert parse().augment is None
    from tinyvlm.card import model_card
    from tinyvlm.config import get_preset
    params = {"total": 1, "vision": 1, "connector": 1, "decoder": 1}
    for saved, shown in ((True, "light"), ("colour", "colour")):  # an old model's card, re-saved
        assert f"| augmentation | {shown} |" in model_card(get_preset("nano"), params, training={"augment": saved})


def test_colour_augment_reads_each_picture_with_its_text_in_every_stage(tmp_path, monkeypatch):
    """The VLM and SigLIP stages hand augment the text each picture is read with; MAE none."""
    from tinyvlm.data import batches
    from tinyvlm.train import stages
    seen = []

    def spy(real):
        def augment(img, rng, mode="light", text="", colour_rng=None):
            seen.append((real.__module__, mode, text))
            return real(img, rng, mode, text, colour_rng)
        return augment

    monkeypatch.setattr(batches, "augment", spy(batches.augment))
    monkeypatch.setattr(stages, "augment", spy(stages.augment))
    pictures = make_shapes_dataset(tmp_path / "p", n=8, seed=0)
    data = pictures.parent / "mixed.jsonl"  # half the captions name a colour, half none
    rows = [json.loads(l) for l in pictures.read_text().splitlines()]
    for r in rows[::2]:
        r["text"] = "a thing on a page."
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(_cfg(tmp_path, data, steps=6, batch_size=4, mae=0.34, siglip=0.34, augment="colour", eval_every=100))
    assert {m for _, m, _ in seen} == {"colour"}
    texts = [t for _, _, t in seen]
    assert "" in texts  # MAE: the picture alone
    assert any("a thing on a page." == t for t in texts)  # SigLIP: the caption
    assert any("Describe the picture." in t and "a thing on a page." in t for t in texts)  # VLM: the turns
    assert any(t.endswith("on a white page.") and "Describe" in t for t in texts)


def test_siglip_reads_a_picture_with_every_caption_it_matches_in_the_batch(tmp_path, monkeypatch):
    """A photo's records share its file, and SigLIP counts them all as its matches: a copy whose
    own caption names no colour must not be turned while another record's caption says "red"."""
    from tinyvlm.data.images import names_colour
    from tinyvlm.train import stages
    seen = []

    def augment(img, rng, mode="light", text="", colour_rng=None):
        seen.append(text)
        return real(img, rng, mode, text, colour_rng)

    real = stages.augment
    monkeypatch.setattr(stages, "augment", augment)
    pictures = make_shapes_dataset(tmp_path / "p", n=8, seed=0)
    rows = [json.loads(l) for l in pictures.read_text().splitlines()]
    data = pictures.parent / "twice.jsonl"  # each picture twice: its colour caption, and one naming none
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**r, "text": "a thing on a page."} for r in rows]))
    train(_cfg(tmp_path, data, steps=4, batch_size=16, siglip=0.5, augment="colour", eval_every=100))
    both = [t for t in seen if "a thing on a page." in t and "white page" in t]  # both records in one batch
    assert both and all(names_colour(t) for t in both), seen


def test_the_concept_stage_accumulates_micro_batches(tmp_path, shapes):
    """--grad-accum 2 in the concept stage: each step reads two micro-batches of records."""
    make_shapes_dataset(tmp_path / "val", n=8, seed=1)
    for accum in (1, 2):
        out = tmp_path / f"run{accum}"
        train(_cfg(tmp_path, shapes, out=str(out), val_data=str(tmp_path / "val/data.jsonl"), steps=4, batch_size=4,
                   grad_accum=accum, concept_pretrain=0.5, save_every=100))
        state = json.loads((out / "concepts" / "state.json").read_text())
        assert (state["step"], state["epoch"], state["pos"]) == (2, 0, 8 * accum)


def test_a_broken_picture_is_skipped_and_named_once_and_resume_gets_past_it(tmp_path, shapes, monkeypatch, capsys):
    """A JSONL naming one unreadable picture among good ones: both stages train on the rest, the
    picture is named once on stderr and once in metrics.jsonl, and a resume does not stop at it
    (nor name it again). A validation set with a broken picture validates on the others."""
    from conftest import interrupt_training
    (shapes.parent / "images/bad.png").write_bytes(b"this is not a png")
    with open(shapes, "a") as f:
        f.write(json.dumps({"image": "images/bad.png", "text": "a red square on a white page."}) + "\n")
    val = make_shapes_dataset(tmp_path / "val", n=8, seed=1)
    (val.parent / "images/000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    cfg = _cfg(tmp_path, shapes, val_data=str(val), steps=24, concept_pretrain=0.25, save_every=5, eval_every=5)
    interrupt_training(monkeypatch, cfg, lambda row: row.get("stage") is None and row.get("step") == 10)
    train(cfg, resume=True)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert [sum(name in l for l in lines) for name in ("bad.png", "000.png")] == [1, 1], err
    rows = _metrics(tmp_path / "run")
    named = sorted(Path(r["skipped_image"]).name for r in rows if "skipped_image" in r)
    assert named == ["000.png", "bad.png"], named
    assert [r["step"] for r in rows if "loss" in r][-1] == 18  # the VLM stage's 18 steps, all done
    assert any("val_loss" in r for r in rows) and any("val_concept_f1" in r for r in rows)


def test_a_model_names_the_tasks_it_was_trained_on_and_warns_on_others(tmp_path, shapes, capsys):
    """Captions teach ShortDesc only: the saved model keeps that, and asking it for a LongDesc or a
    question warns (one line from the CLI) instead of silently writing text unlike its training."""
    import warnings

    from tinyvlm import TinyVLM
    from tinyvlm.cli import main
    from tinyvlm.errors import TrainedTaskWarning
    train(_cfg(tmp_path, shapes, steps=2))
    vlm = TinyVLM.from_pretrained(tmp_path / "run")
    assert vlm.tasks == ("short",)
    picture = str(next((shapes.parent / "images").iterdir()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vlm.describe(picture, style="short")  # what it learned: no warning
    with pytest.warns(TrainedTaskWarning, match="never trained on LongDesc.*trained on short"):
        vlm.describe(picture, style="long")
    with pytest.warns(TrainedTaskWarning, match="questions"):
        vlm.ask(picture, "what colour is it?")
    assert main(["describe", picture, "--model", str(tmp_path / "run"), "--style", "long"]) == 0
    err = capsys.readouterr().err
    assert err.count("tinyvlm: warning: this model was never trained on LongDesc") == 1 and "Traceback" not in err


def test_init_at_another_image_size_drops_the_concept_head_a_frozen_encoder_kept(tmp_path, shapes):
    """--freeze-encoder keeps the concept head of an --init model only where the encoder it read is
    unchanged: at another size its positions are resized, so the head goes (as when it trains)."""
    train(_cfg(tmp_path / "a", shapes, steps=4, concept_pretrain=0.5, freeze_encoder=True, eval_every=4, save_every=4))
    src = tmp_path / "a" / "run" / "checkpoint"
    assert TinyVLM.from_pretrained(src).concept_head is not None
    same = train(_cfg(tmp_path / "b", shapes, init=str(src), image_size=32, freeze_encoder=True, steps=1))
    assert same.concept_head is not None
    big = train(_cfg(tmp_path / "c", shapes, init=str(src), image_size=64, freeze_encoder=True, steps=1))
    assert big.concept_head is None and TinyVLM.from_pretrained(tmp_path / "c" / "run").concept_head is None


@pytest.mark.parametrize("grid", [0, -2, 2.5, float("nan"), True])
def test_resize_positions_refuses_a_grid_that_is_not_a_whole_number_of_patches(grid):
    import torch
    from tinyvlm.model.vision import resize_positions
    with pytest.raises(TinyVLMError, match="grid must be a whole number >= 1"):
        resize_positions(torch.zeros(1, 17, 4), grid)


def test_init_at_another_image_size_resizes_the_learned_positions(tmp_path, shapes):
    """nano at 32 px (patch 8: a 4x4 grid), then fine-tuned at 64 px (8x8): [CLS] keeps its
    position, the grid's are interpolated in row-major order, and training runs at the new size."""
    import torch
    from tinyvlm.model.vision import resize_positions
    train(_cfg(tmp_path / "a", shapes, steps=10, save_every=10))
    small = tmp_path / "a" / "run" / "checkpoint"
    pos = TinyVLM.from_pretrained(small).model.vision.pos.detach()
    assert torch.equal(resize_positions(pos, 4), pos)

    ramp = torch.zeros(1, 17, 2)  # channel 0: the patch's row, channel 1: its column
    ramp[0, 1:, 0], ramp[0, 1:, 1] = torch.arange(16) // 4, torch.arange(16) % 4
    big = resize_positions(ramp, 8)[0, 1:].reshape(8, 8, 2)
    assert (big[1:, :, 0] > big[:-1, :, 0]).all() and (big[:, 1:, 1] > big[:, :-1, 1]).all()
    assert torch.allclose(big[:, 1:, 0], big[:, :-1, 0]) and torch.allclose(big[1:, :, 1], big[:-1, :, 1])

    vlm = train(_cfg(tmp_path / "b", shapes, init=str(small), image_size=64, steps=6, eval_every=3, save_every=3))
    assert vlm.cfg.vit_image_size == 64 and vlm.model.vision.pos.shape == (1, 65, pos.shape[2])
    assert [r["step"] for r in _metrics(tmp_path / "b" / "run") if "val_loss" in r] == [3, 6]
    again = TinyVLM.from_pretrained(tmp_path / "b" / "run")
    assert again.cfg.vit_image_size == 64 and again.describe(str(shapes.parent / "images/000.png"))

    same = train(_cfg(tmp_path / "c", shapes, init=str(small), image_size=32, steps=1, lr=1e-9, warmup=0))
    assert torch.allclose(same.model.vision.pos[0, 1:], pos[0, 1:].to(same.model.vision.pos), atol=1e-6)

    with pytest.raises(TinyVLMError, match="image size 36 is not a multiple of patch size 8"):
        train(_cfg(tmp_path / "d", shapes, init=str(small), image_size=36))
    with pytest.raises(TinyVLMError, match="has patch-size 8, which its weights fix"):
        train(_cfg(tmp_path / "e", shapes, init=str(small), image_size=64, patch_size=16))
