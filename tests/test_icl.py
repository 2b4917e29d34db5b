"""In-context learning: the world's episodes follow their rules, held-out invented names never reach
training, the loss falls only on the answers earlier shots determine, the VL-ICL reader reads a
fixture in VL-ICL's own layout, the shuffled baseline really shuffles, VL-ICL's scoring, the
context error, and the command-line paths (data icl, train --tasks ...,icl, eval --suite icl,
ask --shot)."""
import json
import random
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tinyvlm.api import TinyVLM
from tinyvlm.cli import main
from tinyvlm.data.batches import Collator, only_turns, record_to_example
from tinyvlm.data.dataset import open_records
from tinyvlm.data.episodes import Episode, Shot
from tinyvlm.data.vlicl import read_vlicl
from tinyvlm.errors import TinyVLMError
from tinyvlm.eval.icl import correct, cut
from tinyvlm.tokenizer import IGNORE
from tinyvlm.world import icl


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return icl.Pictures(tmp_path_factory.mktemp("pics"), 32, seed=0, per_kind=10, scenes=24)


def _attrs(pics):
    return {path: attrs for pool in pics.single.values() for path, attrs in pool}


@pytest.mark.parametrize("seed", range(6))
def test_every_family_answers_by_its_rule(pictures, seed):
    attrs, scenes = _attrs(pictures), dict(pictures.scenes)
    rng = random.Random(seed)
    for family in icl.FAMILIES:
        e = icl.make_episode(family, rng, pictures, 6, held_out=False)
        shots = (*e.support, e.query)
        assert len(e.support) == 6 and len(e.learn) == 7
        if family == "binding":
            word_of = {}
            for s in shots:  # one word a kind, two kinds, two words
                kind = attrs[s.images[0]]["kind"]
                assert word_of.setdefault(kind, s.answer) == s.answer
            assert len(word_of) == 2 and len(set(word_of.values())) == 2
            assert sorted(s.answer for s in e.support[:2]) == sorted(word_of.values())  # any 2 shots show both
            seen = set()
            for s, learn in zip(shots, e.learn):  # a loss only where an earlier shot named the kind
                assert learn == (s.answer in seen)
                seen.add(s.answer)
        elif family == "operator":
            op = icl.OPERATORS[e.meta["operator"]]
            for s in shots:
                a, b = map(int, re.search(r"sum-(\d)(\d)-", s.images[0]).groups())
                assert s.answer == str(op(a, b)) and a >= b
        elif family == "count":
            for s in shots:
                attribute, value = s.question.split(": ")
                assert attribute == e.meta["attribute"]
                things = scenes[s.images[0]].things
                assert s.answer == str(sum(t.count for t in things if getattr(t, attribute) == value))
        else:
            relation = e.meta["relation"]
            for s in shots:
                a, b = (attrs[p] for p in s.images)
                assert s.answer == ("yes" if a[relation] == b[relation] else "no")


def test_held_out_invented_names_never_appear_in_training_episodes(tmp_path):
    train = icl.write_episodes(tmp_path / "train", 24, seed=0, shots=(2, 4), families=("binding",), size=32,
                               per_kind=6, scenes=2)
    test = icl.write_episodes(tmp_path / "test", 24, seed=1, shots=(4, 4), families=("binding",), size=32,
                              per_kind=6, scenes=2, held_out=True)

    def words(path):
        return {text for r in open_records(path) for role, text in r.turns if role == "assistant"}

    seen, held = words(train), words(test)
    assert len(seen) > 30 and len(held) > 30
    assert not seen & held
    assert not any(icl.held_out_word(w) for w in seen) and all(icl.held_out_word(w) for w in held)


def test_drawings_sets_the_pictures_of_each_digit_pair_and_the_default_keeps_old_folders(tmp_path):
    from tinyvlm.errors import TinyVLMError
    common = dict(n=12, seed=5, shots=(2, 4), families=("operator",), size=32, per_kind=6, scenes=2)
    icl.write_episodes(tmp_path / "two", **common)
    icl.write_episodes(tmp_path / "five", drawings=5, **common)
    sums = lambda d: sorted(p.name for p in (tmp_path / d).glob("sum-*.png"))
    assert len(sums("two")) == 55 * 2 and len(sums("five")) == 55 * 5
    assert json.loads((tmp_path / "five" / "icl.json").read_text())["drawings"] == 5
    used = {p for r in open_records(tmp_path / "five" / "episodes.jsonl") for p in r.images}
    assert any(Path(p).stem.endswith(("-2", "-3", "-4")) for p in used)  # episodes draw from all of them
    # the default rebuilds a folder made before the option: the same pictures, byte for byte
    old = tmp_path / "old"
    old.mkdir()
    pics = icl.Pictures(old, 32, 5, 6, 2)
    assert all((old / n).read_bytes() == (tmp_path / "two" / n).read_bytes() for n in sums("two"))
    assert len(pics.sums[9, 0]) == 2
    with pytest.raises(TinyVLMError, match="drawings"):
        icl.write_episodes(tmp_path / "zero", drawings=0, **common)


def test_episodes_round_trip_and_the_loss_falls_on_determined_answers_only(pictures):
    from tinyvlm.data.records import Record
    e = icl.binding(random.Random(3), pictures, 4, held_out=False)
    record = Record.from_json(e.to_record().to_json(), root=pictures.out)  # paths: relative to the episodes' folder
    back = Episode.from_record(record)
    assert [(s.question, s.answer) for s in back.support] == [(s.question, s.answer) for s in e.support]
    assert back.query.images == (str(pictures.out / e.query.images[0]),) and back.learn == e.learn
    assert only_turns([False, True, True, False, True, False, True], (False, True, True)) == \
        [False, False, False, False, True, False, True]
    from tinyvlm.config import get_preset
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train([s.answer for s in (*e.support, e.query)] + ["What is this?"] * 3, 300)
    cfg = get_preset("nano", lm_vocab_size=512)
    ex = record_to_example(record, random.Random(0))
    batch = Collator(tok, cfg)([ex])
    learned = tok.decode([t for t in batch["labels"][0].tolist() if t != IGNORE])
    want = [s.answer for s, keep in zip((*e.support, e.query), e.learn) if keep]
    assert learned.split() == want


def test_the_shuffled_baseline_permutes_the_support_answers():
    shots = tuple(Shot((f"{i}.png",), "What is this?", w) for i, w in enumerate(["dax", "wug", "dax", "wug", "dax", "wug"]))
    e = Episode("binding", shots, Shot(("q.png",), "What is this?", "dax"))
    s = e.shuffled(random.Random(0))
    assert sorted(x.answer for x in s.support) == sorted(x.answer for x in e.support)
    assert all(a.answer != b.answer for a, b in zip(s.support, e.support))  # every answer moved to the other word
    assert [x.images for x in s.support] == [x.images for x in e.support] and s.query == e.query


def _vlicl_fixture(root):
    task = root / "operator_induction"
    (task / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (32, 32), "white").save(task / "images" / name)
    support = [{"id": i, "image": [f"operator_induction/images/{n}"], "question": "What is the result?",
                "answer": [i + 2, i, i * 2]} for i, n in enumerate(["a.png", "b.png"])]
    query = [{"id": 9, "image": ["operator_induction/images/c.png"], "question": "What is the result?",
              "answer": 6, "operator": "x"}]
    (task / "support.json").write_text(json.dumps(support))
    (task / "query.json").write_text(json.dumps(query))
    mi = root / "open_mi"
    mi.mkdir()
    (mi / "support.json").write_text("[]")
    (mi / "query.json").write_text(json.dumps([{"image": ["open_mi/q.png"], "question": "What is this?",
                                                "answer": "dax", "classes": ["dax", "blicket"],
                                                "support": {"dax": {"images": ["open_mi/d0.png", "open_mi/d1.png"]},
                                                            "blicket": {"images": ["open_mi/b0.png", "open_mi/b1.png"]}}}]))
    return task, mi


def test_the_vlicl_reader_loads_its_layout(tmp_path):
    task, mi = _vlicl_fixture(tmp_path)
    t = read_vlicl(task)
    (e,) = t.episodes(2)
    assert t.numeric and e.family == "operator_induction"
    assert sorted(s.answer for s in e.support) == ["0", "2"]  # the 'x' of each [+, -, x]
    assert e.query.answer == "6" and e.query.images == (str(tmp_path.resolve() / "operator_induction/images/c.png"),)
    assert all(p.startswith(str(tmp_path.resolve())) for s in e.support for p in s.images)
    (b,) = read_vlicl(mi).episodes(2)  # 2 shots of each of two classes, as VL-ICL's open_mi
    assert len(b.support) == 4 and sorted({s.answer for s in b.support}) == ["blicket", "dax"]
    assert all(s.question == "This is a" for s in b.support)
    with pytest.raises(TinyVLMError, match="support.json holds 2"):
        t.episodes(3)
    (task / "query.json").write_text("{not json")
    with pytest.raises(TinyVLMError, match="cannot read it as JSON"):
        read_vlicl(task)


def test_vlicl_scoring_cuts_at_newline_or_period_and_reads_numbers():
    assert cut("dax. It is a dax") == "dax" and cut("wug\nmore") == "wug"
    assert correct("It is 12.", "12") and correct("12 and 13", "12") and not correct("13", "12")
    assert correct("Dax.", "dax") and not correct("dax wug", "dax")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A nano model trained for a few steps on world pictures and episodes, through the CLI."""
    root = tmp_path_factory.mktemp("icl_cli")
    assert main(["data", "world", "--n", "16", "--size", "32", "--out", str(root / "world"), "--quiet"]) == 0
    small = ["--size", "32", "--per-kind", "5", "--scenes", "8"]
    assert main(["data", "icl", "--n", "12", "--shots", "1..3", *small, "--out", str(root / "train")]) == 0
    assert main(["data", "icl", "--n", "8", "--shots", "2", *small, "--held-out", "--seed", "1",
                 "--out", str(root / "test")]) == 0
    assert main(["train", "--data", str(root / "world"), "--icl-data", str(root / "train"), "--tasks", "short,icl",
                 "--out", str(root / "run"), "--preset", "nano", "--steps", "4", "--batch-size", "4",
                 "--quiet"]) == 0
    return root


def test_cli_trains_on_episodes_and_evaluates_in_context(trained, capsys):
    vlm = TinyVLM.from_pretrained(trained / "run")
    assert vlm.tasks == ("short", "icl")
    metrics = [json.loads(l) for l in (trained / "run/metrics.jsonl").read_text().splitlines()]
    assert any("val_icl_loss" in row for row in metrics)
    out = trained / "eval"
    assert main(["eval", "--model", str(trained / "run"), "--suite", "icl", "--data", str(trained / "test"),
                 "--shots", "0,2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == set(icl.FAMILIES)
    assert set(results["tasks"]["binding"]["model"]) == {"0", "2"} and "2" in results["tasks"]["binding"]["shuffled"]
    assert (out / "icl.png").stat().st_size > 0 and "| binding | model |" in (out / "report.md").read_text()
    assert main(["eval", "--model", str(trained / "run"), "--suite", "icl", "--data", str(trained / "test"),
                 "--shots", "4"]) == 2
    assert "only 2 support shots" in capsys.readouterr().err


def test_ask_with_shots_and_a_prompt_too_long_for_the_context(trained, capsys):
    pics = sorted(str(p) for p in (trained / "test").glob("one-*.png"))
    assert main(["ask", pics[0], "What is this?", "--model", str(trained / "run"),
                 "--shot", pics[1], "What is this?", "dax", "--shot", pics[2], "What is this?", "wug"]) == 0
    vlm = TinyVLM.from_pretrained(trained / "run")  # nano: 512 tokens, 19 a picture
    shots = [(pics[1], "What is this?", "dax")] * 40
    with pytest.raises(TinyVLMError, match=r"41 picture\(s\) .* at most (\d+) picture\(s\) fit"):
        vlm.ask(pics[0], "What is this?", shots=shots)
    assert main(["ask", pics[0], "What is this?", "--model", str(trained / "run"), "--shot", pics[1], "", "dax"]) == 2
    assert "shot 1 must be" in capsys.readouterr().err


def test_easy_binding_shows_one_picture_a_kind(pictures):
    e = icl.binding(random.Random(1), pictures, 6, held_out=False, ease=1.0)
    pictures_of = {}
    for s in (*e.support, e.query):
        pictures_of.setdefault(s.answer, set()).update(s.images)
    assert len(pictures_of) == 2 and all(len(p) == 1 for p in pictures_of.values())
    hard = icl.binding(random.Random(1), pictures, 6, held_out=False)
    assert len({s.images for s in hard.support}) == 6


def test_icl_copy_saves_a_model_folder_that_picture_tuning_starts_from(trained, tmp_path):
    """benchmarks/icl_copy.py --save: the source's encoder and connector, its own decoder, and
    `tinyvlm train --init` takes it; --key first puts the kind where a picture episode puts its picture."""
    copy = _icl_copy()
    turns, _, _ = copy.episode(random.Random(0), 2, False, key_first=True)
    assert turns[0][1].split()[0] in copy.KINDS and turns[0][1].endswith(copy.QUESTIONS["binding"])
    out = tmp_path / "text"
    copy.main(["--model", str(trained / "run"), "--steps", "3", "--every", "3", "--n", "2", "--key", "first",
               "--plain-steps", "1", "--lr", "1e-2", "--save", str(out)])
    src, new = TinyVLM.from_pretrained(trained / "run"), TinyVLM.from_pretrained(out)
    a, b = src.model.state_dict(), new.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("decoder."))
    assert not torch.equal(a["decoder.head.weight"], b["decoder.head.weight"])  # the text-trained decoder
    assert new.tasks is None and new.tokenizer.to_str() == src.tokenizer.to_str()
    assert main(["train", "--data", str(trained / "world"), "--icl-data", str(trained / "train"), "--tasks", "icl",
                 "--icl-share", "1", "--init", str(out), "--out", str(tmp_path / "pic"), "--steps", "2",
                 "--batch-size", "2", "--quiet"]) == 0


def _icl_copy():
    return _benchmark("icl_copy")


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_icl_copy_operator_episodes_follow_one_operator_and_shuffle(trained, capsys):
    """--family operator: every answer of an episode is one operator's result on its "a ? b", the
    first shot carries no loss, and the shuffled baseline moves the support answers only."""
    copy = _icl_copy()
    rng = random.Random(0)
    for _ in range(30):
        turns, learn, results = copy.operator_episode(rng, 4, key_first=True)
        sums = [tuple(map(int, re.match(r"(\d) \? (\d) What is the answer\?$", q).groups())) for _, q in turns[::2]]
        answers = [a for _, a in turns[1::2]]
        assert all(a >= b for a, b in sums) and learn == [False, True, True, True, True]
        assert any(all(str(op(a, b)) == ans for (a, b), ans in zip(sums, answers)) for op in icl.OPERATORS.values())
        assert answers[-1] in results and len(results) <= 3
        mixed = copy.shuffled(rng, turns)
        assert mixed[::2] == turns[::2] and mixed[-1] == turns[-1]
        assert sorted(mixed[1:-2:2]) == sorted(turns[1:-2:2])
        if len(set(answers[:-1])) == 4:  # four different answers: a derangement moves every one
            assert all(m != t for m, t in zip(mixed[1:-2:2], turns[1:-2:2]))
    capsys.readouterr()
    copy.main(["--model", str(trained / "run"), "--family", "operator", "--steps", "2", "--every", "2", "--n", "2"])
    assert "8-shot exact / shuffled / some op." in capsys.readouterr().out


def test_encoder_probe_reads_what_episode_pictures_hold(trained, tmp_path, capsys):
    """benchmarks/encoder_probe.py --icl: probes for every family's target from each feature, and a
    folder whose pictures its seed does not rebuild is refused (its truth would be wrong)."""
    import shutil
    probe = _benchmark("encoder_probe")
    out = tmp_path / "probe.json"
    capsys.readouterr()
    probe.main(["--encoder", f"run={trained / 'run'}", "--icl", str(trained / "train"), "--icl-test",
                str(trained / "test"), "--iters", "3", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["encoder"] for r in rows] == ["random (32 px, patch)", "run"]
    assert all(0 <= r[f"{t}|{f}"] <= 1 for r in rows for t in probe.ICL_TARGETS for f in (*probe.ICL_FEATURES, "majority"))
    assert "| op. left |" in capsys.readouterr().out
    other = tmp_path / "other"
    shutil.copytree(trained / "train", other)
    shutil.copy(other / "scene-00001.png", other / "scene-00000.png")
    with pytest.raises(TinyVLMError, match="not what its seed rebuilds"):
        probe.main(["--encoder", f"run={trained / 'run'}", "--icl", str(other), "--icl-test", str(trained / "test")])
    with pytest.raises(TinyVLMError, match="go together"):
        probe.main(["--encoder", f"run={trained / 'run'}", "--icl", str(other)])


def test_icl_copy_refuses_a_save_folder_before_training(trained, tmp_path, monkeypatch):
    """--save into a folder of someone else's files, onto a file, or onto the --model it reads is
    refused before any training (which could be hours), and nothing there is touched."""
    copy = _icl_copy()
    monkeypatch.setattr(copy, "evaluate", lambda *a: pytest.fail("trained before refusing --save"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (tmp_path / "a.txt").write_text("keep")
    for out in (mine, tmp_path / "a.txt", trained / "run", trained / "run" / "checkpoint"):
        with pytest.raises(TinyVLMError, match="not a tinyvlm model|the --model folder"):
            copy.main(["--model", str(trained / "run"), "--steps", "1", "--save", str(out)])
    assert (mine / "notes.txt").read_text() == "keep" and (tmp_path / "a.txt").read_text() == "keep"
    assert TinyVLM.from_pretrained(trained / "run").tokenizer is not None
