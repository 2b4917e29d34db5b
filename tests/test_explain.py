"""tinyvlm explain: per-word maps, DeViL's translator, the files the command writes, the pointing
game, and one clear line for bad input."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tinyvlm import TinyVLM
from tinyvlm.cli import main
from tinyvlm.config import VLMConfig
from tinyvlm.concepts import ConceptHead
from tinyvlm.eval.attribution import centre_prior, score
from tinyvlm.explain import Explanation, explain
from tinyvlm.explain.translator import Explainer, Translator
from tinyvlm.model import VisionLanguageModel
from tinyvlm.tokenizer import Tokenizer
from tinyvlm.train import TrainConfig, train

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40)}


def two_by_two(root: Path, n: int, seed: int) -> Path:
    """32-px pictures of four 16-px patches, one holding a coloured square: 'a red square.'"""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour, cell = rng.choice(list(COLOURS)), rng.randrange(4)
        x, y = (cell % 2) * 16 + 2, (cell // 2) * 16 + 2
        im = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(im).rectangle((x, y, x + 11, y + 11), fill=COLOURS[colour])
        im.save(root / f"images/{i:03d}.png")
        lines.append(json.dumps({"image": f"images/{i:03d}.png", "text": f"a {colour} square.", "cell": cell}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A nano model (2 x 2 patches) trained briefly, and its explainer trained by the CLI."""
    root = tmp_path_factory.mktemp("explain")
    data = two_by_two(root / "train", 64, 0)
    two_by_two(root / "test", 20, 1)
    train(TrainConfig(data=str(data), out=str(root / "m"), preset="nano", image_size=32, patch_size=16, steps=120,
                      batch_size=16, dropout=0.0, concept_pretrain=0.5, freeze_encoder=True, vocab_size=300,
                      progress=False))
    assert main(["train-explainer", "--model", str(root / "m"), "--data", str(data), "--steps", "60",
                 "--batch-size", "16", "--quiet"]) == 0
    return root


def test_devil_map_peaks_on_the_patch_that_holds_the_word(trained):
    vlm = TinyVLM.from_pretrained(trained / "m")
    records = [json.loads(l) for l in (trained / "test/data.jsonl").read_text().splitlines()]
    hits = []
    for r in records:
        e = vlm.explain(trained / "test" / r["image"], text=r["text"], method="devil")
        assert e.grid == (2, 2) and e.layer == 1 and "nats" in e.units  # default: the encoder's output
        assert [w.word for w in e.words] == [r["text"].split()[1], "square"]
        hits += [int(np.argmax(w.map)) == r["cell"] for w in e.words]
    # measured 1.0 (40 of 40); the picture's own patch out of four, by chance 0.25
    assert np.mean(hits) >= 0.9


def tiny_vlm(size: int, shuffle: int) -> TinyVLM:
    texts = ["a red ball on the grass.", "I see two big dogs.", "Describe the picture."] * 20
    cfg = VLMConfig(vit_image_size=size, vit_patch_size=16, vit_width=32, vit_heads=4, mp_pixel_shuffle=shuffle,
                    lm_width=32, lm_depth=1, lm_heads=4, lm_vocab_size=512, lm_max_len=512, dropout=0.0)
    vlm = TinyVLM(VisionLanguageModel(cfg).eval(), Tokenizer.train(texts, 300))
    vlm.concepts, vlm.concept_head = ["ball", "dog"], ConceptHead(32, 2).eval()
    return vlm


@pytest.mark.parametrize("size, shuffle", [(64, 1), (64, 2), (224, 1), (224, 2)])
def test_maps_follow_the_patch_grid(size, shuffle):
    vlm = tiny_vlm(size, shuffle)
    g = size // 16
    ex = Explainer(Translator(32, 32, 2).eval(), 2, 0)
    picture = Image.new("RGB", (size, size), "white")
    for method in ("devil", "gradient", "rollout", "concept"):
        e = explain(vlm, picture, "I see a red ball and two dogs.", method, explainer=ex)
        want = ["red", "ball", "dogs"] if method != "concept" else ["ball", "dogs"]
        assert [w.word for w in e.words] == want, method
        for w in e.words:
            assert w.map.shape == (g, g) and np.isfinite(w.map).all(), method
        if method == "concept":
            assert all(0 <= w.map.min() and w.map.max() <= 1 for w in e.words)  # probabilities
        if method == "rollout":
            assert all(w.map.min() >= 0 and w.map.sum() <= 1 + 1e-5 for w in e.words)  # attention shares


def test_letterboxed_pictures_map_back_to_the_original_coordinates():
    # a 128 x 64 picture padded into a 64-px square: it fills rows 16..47, so patch rows 1 and 2 of 4
    e = Explanation("a ball", "concept", "", None, (4, 4), (128, 64), "pad", 64)
    m = np.zeros((4, 4))
    m[1, 3] = 1.0  # the top-right patch of the picture itself
    pic = e.in_picture(m)
    assert pic.shape == (64, 128)
    assert pic[:32, 96:].min() == 1 and pic[32:].max() == 0 and pic[:, :96].max() == 0
    assert e.peak(m) == (112.0, 16.0)
    # and through the model: a wide picture keeps its own size in the original coordinates
    vlm = tiny_vlm(64, 1)
    got = vlm.explain(Image.new("RGB", (128, 64), "white"), text="a red ball.", method="gradient")
    assert got.picture == (128, 64) and got.in_picture(got.words[0].map).shape == (64, 128)
    # centre-crop: the cut edges were never seen
    e = Explanation("a ball", "concept", "", None, (4, 4), (128, 64), "crop", 64)
    pic = e.in_picture(np.ones((4, 4)))
    assert np.isnan(pic[:, :32]).all() and np.isnan(pic[:, 96:]).all() and (pic[:, 32:96] == 1).all()


def test_pointing_game_and_mass_on_a_hand_made_map():
    e = Explanation("a ball", "concept", "", None, (4, 4), (64, 64), "pad", 64)
    region = np.zeros((64, 64), dtype=bool)
    region[2:8, 50:62] = True  # a small thing in the top-right patch, away from the patch's centre
    m = np.full((4, 4), 0.1)
    m[0, 3] = 0.5
    s = score(e, "concept", m, region)
    assert s["pointing"] and s["mass_inside"] == pytest.approx(0.5 / (0.5 + 15 * 0.1))
    assert not s["pointing_pixels"]  # the patch's centre (56, 8) is below the thing
    assert s["mass_inside_pixels"] == pytest.approx(0.5 * 72 / 256 / (0.5 + 15 * 0.1))
    assert s["area"] == 1 / 16 and s["area_pixels"] == 72 / 4096
    m[2, 0] = 0.9
    assert not score(e, "concept", m, region)["pointing"]
    # devil's log-probabilities become the location's posterior: a softmax over locations
    logp = np.log(np.full((4, 4), 1 / 30))
    logp[0, 3] = np.log(15 / 30)
    s = score(e, "devil L0", logp, region)
    assert s["pointing"] and s["mass_inside"] == pytest.approx(0.5)
    # the centre prior points at the centre: not the top-right patch
    assert not score(e, "centre", centre_prior((4, 4)), region, (32, 32))["pointing"]


def test_world_regions_cover_the_drawn_thing(tmp_path):
    from tinyvlm.data.dataset import open_records
    from tinyvlm.world import write_world
    from tinyvlm.world.regions import regions
    from tinyvlm.world.scene import KINDS
    write_world(tmp_path / "w", n=3, size=64, seed=0, progress=False)
    for r in open_records(tmp_path / "w", "train"):
        for t in r.scene["things"]:
            mask = regions(r, KINDS[t["kind"]].plural, (64, 64))
            x0, y0, x1, y1 = t["box"]
            assert mask.shape == (64, 64) and mask[int((y0 + y1) / 2 * 64), int(x0 * 64 + 1)]
            assert 0 < mask.mean() <= (x1 - x0) * (y1 - y0) + 0.05
        kinds = {t["kind"] for t in r.scene["things"]}
        assert regions(r, next(k for k in ("dog", "cat", "fish", "boat", "moon") if k not in kinds), (64, 64)) is None
        assert regions(r, "happy", (64, 64)) is None


def test_explain_cli_writes_the_overlays_sheet_page_and_maps(trained, tmp_path, capsys):
    image = trained / "test/images/000.png"
    out = tmp_path / "page"
    assert main(["explain", str(image), "--model", str(trained / "m"), "--out", str(out), "--layer", "0"]) == 0
    text = capsys.readouterr().out.splitlines()[0]
    doc = json.loads((out / "maps.json").read_text())
    assert doc["text"] == text and [m["method"] for m in doc["methods"]] == ["rollout", "gradient", "concept", "devil"]
    devil = doc["methods"][-1]
    assert devil["layer"] == 0 and all(np.array(w["map"]).shape == (2, 2) for w in devil["words"])
    n_words = sum(len(m["words"]) for m in doc["methods"])
    assert n_words and len(list((out / "overlays").glob("*.png"))) == n_words
    page = (out / "index.html").read_text()
    assert page.count('class="w"') == n_words and "block 1</b>, all locations pooled" in page
    assert len(doc["layers"]) == 2 and len(doc["layers"][0]["locations"]) == 4  # every location's description
    assert Image.open(out / "contact_sheet.png").size[1] > 4 * 100


def test_eval_attribution_suite_scores_every_method_and_baseline(trained, tmp_path, monkeypatch):
    from tinyvlm.eval.attribution import AttributionConfig, evaluate_attribution
    from tinyvlm.world import write_world
    write_world(tmp_path / "w", n=4, size=32, seed=1, progress=False)
    monkeypatch.setattr(TinyVLM, "describe", lambda self, images, **k: ["I see a ball and a tree and a cloud."] * len(images))
    res = evaluate_attribution(AttributionConfig(model=str(trained / "m"), data=str(tmp_path / "w"), n=4,
                                                 progress=False, out=str(tmp_path / "out")))
    rows = res["methods"]
    assert list(rows) == ["rollout", "gradient", "concept", "devil L0", "devil L1", "random", "centre"]
    words = rows["random"]["words"]
    assert words > 0 and all(r["words"] == words for n, r in rows.items() if n != "concept")
    assert all(0 <= r[k] <= 1 for r in rows.values() for k in ("pointing", "mass_inside", "pointing_pixels",
                                                                "mass_inside_pixels") if r["words"])
    assert rows["concept"]["words"] == 0  # its concepts are the squares' colours: no thing word is one
    assert json.loads((tmp_path / "out/attribution.json").read_text())["n"] == 4


@pytest.mark.parametrize("argv, says", [
    (["explain", "{img}", "--method", "sharpest"], "unknown method 'sharpest'"),
    (["explain", "{img}", "--method", "rollout", "--layer", "0"], "read no layer"),
    (["explain", "{img}", "--method", "devil", "--layer", "5"], "layer must be a whole number >= 0 and <= 1"),
    (["explain", "{img}", "--method", "devil", "--explainer", "{root}/none"], "no trained explainer"),
    (["explain", "{img}", "--explainer", "{root}/none"], "no trained explainer"),
    (["explain", "{root}/nope.png"], "image not found"),
    (["explain", "{img}", "--text", "  "], "the text to explain is empty"),
    (["train-explainer", "--data", "{root}/train/data.jsonl", "--steps", "0"], "steps must be"),
    (["eval", "--data", "{root}/train/data.jsonl", "--suite", "attribution"], "does not say where things are drawn"),
])
def test_bad_input_is_one_line(trained, tmp_path, capsys, argv, says):
    argv = [a.format(img=trained / "test/images/001.png", root=trained) for a in argv]
    code = main([*argv, "--model", str(trained / "m"), *(["--out", str(tmp_path / "o")] if argv[0] == "explain" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
