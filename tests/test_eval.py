"""`tinyvlm eval` end to end on a tiny trained model: every measure lands in results.json and the
report, baselines sit beside the model, and a set without the truth a judge needs says which can run."""
import json

import pytest

from conftest import make_shapes_dataset
from test_llm import GOOD, FakeChatServer
from tinyvlm.cli import main
from tinyvlm.world import write_world
from tinyvlm.errors import TinyVLMError
from tinyvlm.eval.run import EvalConfig, evaluate, normalise_answer
from tinyvlm.train import TrainConfig, train


@pytest.fixture(scope="module")
def world_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_world(root / "train", n=40, size=32, seed=0, progress=False, workers=1)
    write_world(root / "test", n=6, size=32, seed=1, progress=False, workers=1)
    train(TrainConfig(data=str(root / "train"), out=str(root / "run"), preset="nano", steps=20, batch_size=8,
                      vocab_size=400, progress=False))
    return root


def test_world_eval_reports_every_measure_with_baselines(world_model, tmp_path):
    r = evaluate(EvalConfig(model=str(world_model / "run"), data=str(world_model / "test"), out=str(tmp_path), n=6))
    assert set(r["runs"]) == {"model", "blind", "nearest"}
    model = r["runs"]["model"]
    for setting in ("short/free", "short/complete"):
        assert set(model[setting]["rubric"]) == {"grammar", "consistency", "creativity", "meaningfulness", "plot"}
        assert all(0 <= v <= 10 for v in model[setting]["rubric"].values())
        assert "claim_precision" in model[setting]["raw"] and "hallucination_per_thing" in model[setting]["raw"]
    for task in ("vqa", "probe"):
        assert 0 <= model[task]["accuracy"] <= 1 and model[task]["n"] > 0 and model[task]["by_type"]
    # the nearest-neighbour baseline copies a true training description: grammatical by construction
    assert r["runs"]["nearest"]["short/free"]["rubric"]["grammar"] == 10
    assert r["memorisation"]["short"]["mean_rouge_l"] >= 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"]["model"]["probe"] == model["probe"]
    report = (tmp_path / "report.md").read_text()
    assert "| model | short/free |" in report and "| blind |" in report and "| nearest |" in report
    for f in ("report.html", "rubric.png", "vqa.png", "probe.png", "samples.png"):
        assert (tmp_path / f).stat().st_size > 500, f


def test_llm_judge_through_eval(world_model, tmp_path):
    with FakeChatServer(lambda body, n: GOOD if n % 3 else "not json at all") as srv:
        r = evaluate(EvalConfig(model=str(world_model / "run"), data=str(world_model / "test"), n=3, judge="llm",
                                baselines=False, llm_base_url=srv.url, llm_model="judge"))
    res = r["runs"]["model"]["short/free"]
    assert res["n_scored"] == 3 and res["rubric"]["grammar"] == 8  # malformed replies were asked again


def test_missing_truth_names_the_judge_that_can_run(world_model, tmp_path, capsys):
    photos = make_shapes_dataset(tmp_path / "photos")
    with pytest.raises(TinyVLMError, match="no scene graphs.*--judge llm"):
        evaluate(EvalConfig(model=str(world_model / "run"), data=str(photos)))
    code = main(["eval", "--model", str(world_model / "run"), "--data", str(world_model / "test"), "--judge", "captions"])
    err = capsys.readouterr().err
    assert code == 2 and "no reference captions" in err and "--judge grounded" in err


def test_caption_judge_on_references(world_model, tmp_path):
    data = make_shapes_dataset(tmp_path / "photos", n=8)
    lines = [json.loads(l) | {"references": [json.loads(l)["text"], "a shape on a page."]} for l in data.read_text().splitlines()]
    data.write_text("\n".join(json.dumps(l) for l in lines))
    r = evaluate(EvalConfig(model=str(world_model / "run"), data=str(data), judge="captions", n=8,
                            train_data=str(data), out=str(tmp_path / "out")))
    caps = r["runs"]["model"]["short/free"]["captions"]
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(caps)
    # nearest neighbour on the training set itself finds each image's own caption: a perfect copy
    assert r["runs"]["nearest"]["short/free"]["captions"]["BLEU-4"] > 0.9


def test_answer_normalisation():
    assert normalise_answer("The ball.") == normalise_answer("ball") == "ball"
    assert normalise_answer("Two") == "two" and normalise_answer("in the sky!") == "in sky"
