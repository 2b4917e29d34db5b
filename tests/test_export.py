"""Publishable model folders (model card, training.json, unknown config keys) and the ONNX export:
onnxruntime decodes exactly what PyTorch decodes, int8 is smaller and runs, bad input is one line."""
import json
import shutil
from importlib.util import find_spec

import pytest
import torch

from tinyvlm.api import TinyVLM
from tinyvlm.card import CARD, MARK, TRAINING
from tinyvlm.cli import main
from tinyvlm.errors import TinyVLMError, UnknownConfigWarning
from tinyvlm.generate import Sampling
from tinyvlm.train import TrainConfig, train

HAVE_ONNX = all(find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="the export extra is not installed: pip install 'tinyvlm[export]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A nano model trained 30 steps on the shapes pictures: its run folder and its pictures."""
    from conftest import make_shapes_dataset
    root = tmp_path_factory.mktemp("export")
    data = make_shapes_dataset(root / "shapes")
    train(TrainConfig(data=str(data), out=str(root / "run"), preset="nano", steps=30, batch_size=8, dropout=0.0,
                      eval_every=10, progress=False))
    return root / "run", sorted(str(p) for p in (root / "shapes" / "images").iterdir())


@pytest.fixture(scope="module")
def fp32(run, tmp_path_factory):
    from tinyvlm.export import export_onnx
    return export_onnx(run[0], tmp_path_factory.mktemp("onnx") / "fp32")


def test_the_model_folder_holds_a_card_and_the_training_config_it_was_made_by(run):
    folder = run[0] / "checkpoint"
    training = json.loads((folder / TRAINING).read_text())
    again = TrainConfig(**training)  # the recipe runs again as saved
    assert (again.steps, again.preset, again.batch_size) == (30, "nano", 8)
    card = (folder / CARD).read_text()
    assert card.splitlines()[0] == MARK
    vlm = TinyVLM.from_pretrained(run[0])
    assert vlm.training == training and vlm.figures["steps"] == 30
    assert "| optimizer steps | 30 |" in card and f"| best_val_loss | {vlm.figures['best_val_loss']:g} |" in card
    assert "## Limits" in card and "32 px" in card
    # saved again, the card and the training config travel with the model
    vlm.save_pretrained(run[0].parent / "copy")
    assert json.loads((run[0].parent / "copy" / TRAINING).read_text()) == training
    assert (run[0].parent / "copy" / CARD).read_text() == card


def test_an_unknown_config_key_warns_once_and_is_ignored(run, tmp_path, capsys):
    folder = tmp_path / "newer"
    shutil.copytree(run[0] / "checkpoint", folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["vit_future_trick"] = 3
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UnknownConfigWarning, match="vit_future_trick"):
        vlm = TinyVLM.from_pretrained(folder)
    picture = run[1][0]
    assert vlm.describe(picture) == TinyVLM.from_pretrained(run[0]).describe(picture)
    assert main(["describe", picture, "--model", str(folder)]) == 0
    err = capsys.readouterr().err
    assert err.count("tinyvlm: warning:") == 1 and "vit_future_trick" in err and "Traceback" not in err


def test_saving_never_replaces_a_readme_tinyvlm_did_not_write(run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / CARD).write_text("# my project\n")
    with pytest.raises(TinyVLMError, match="README.md that tinyvlm did not write"):
        TinyVLM.from_pretrained(run[0]).save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / CARD).read_text() == "# my project\n"


@needs_onnx
def test_onnxruntime_decodes_exactly_what_pytorch_decodes(run, fp32):
    pt = TinyVLM.from_pretrained(run[0])
    ox = TinyVLM.from_pretrained(fp32, backend="onnxruntime")
    pictures = run[1][:6]
    assert ox.describe(pictures) == pt.describe(pictures)  # a left-padded batch of 6
    s = Sampling(max_new_tokens=12)
    assert ox.describe(pictures[0], prefix="a", sampling=s) == pt.describe(pictures[0], prefix="a", sampling=s)
    assert ox.generate(["a red"], [[]], sampling=s) == pt.generate(["a red"], [[]], sampling=s)  # no picture
    # the same logits, not only the same argmax, through prefill and three steps
    from tinyvlm.generate import left_pad
    ids, valid = left_pad([[5, 6, 7, 8], [9, 10]])
    (a, sa), (b, sb) = pt.model.prefill(ids, valid), ox.model.prefill(ids, valid)
    for t in range(3):
        assert torch.allclose(a, b, atol=1e-4)
        nxt = a.argmax(-1)
        (a, sa), (b, sb) = pt.model.step(nxt, sa), ox.model.step(nxt, sb)
    assert torch.allclose(a, b, atol=1e-4)
    card = (fp32 / CARD).read_text()
    assert "ONNX export" in card and (fp32 / TRAINING).is_file()


@needs_onnx
def test_int8_export_from_the_command_line_is_smaller_and_describes(run, fp32, tmp_path, capsys):
    out = tmp_path / "int8"  # quantized from the fp32 export: the model is traced once per test run
    assert main(["export", "--model", str(fp32), "--format", "onnx", "--out", str(out), "--int8"]) == 0
    assert "int8 ONNX" in capsys.readouterr().out
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.onnx"))  # noqa: E731
    assert size(out) < 0.6 * size(fp32)
    assert json.loads((out / "config.json").read_text())["export"]["weights"] == "int8"
    assert main(["describe", *run[1][:2], "--backend", "onnxruntime", "--model", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.split("\t")[1].strip() for line in lines)


@needs_onnx
def test_a_model_folder_runs_on_onnxruntime_exported_on_the_fly(run, capsys):
    assert main(["describe", run[1][0], "--backend", "onnxruntime", "--model", str(run[0])]) == 0
    assert capsys.readouterr().out.strip() == TinyVLM.from_pretrained(run[0]).describe(run[1][0])


@needs_onnx
@pytest.mark.parametrize("case, match", [
    ("corrupt", "cannot load .*step.onnx"),
    ("missing", "without prefill.onnx"),
    ("torch", "is an ONNX export: run it with the onnxruntime backend"),
    ("reduce", "reads every visual token"),
    ("ground", "grounded decoding needs the PyTorch model"),
])
def test_bad_input_is_one_line(run, fp32, tmp_path, capsys, case, match):
    folder = tmp_path / "broken"
    shutil.copytree(fp32, folder)
    args = ["describe", run[1][0], "--backend", "onnxruntime", "--model", str(folder)]
    if case == "corrupt":
        (folder / "step.onnx").write_bytes(b"not a graph")
    elif case == "missing":
        (folder / "prefill.onnx").unlink()
    elif case == "torch":
        args = args[:2] + ["--model", str(folder)]
    elif case == "reduce":
        args += ["--keep-tokens", "0.5"]
    else:
        args += ["--ground", "0.5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    import re
    assert re.search(match, err), err


@needs_onnx
def test_export_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "is not a tinyvlm model" in capsys.readouterr().err


@needs_onnx
def test_an_export_is_only_quantized_again(fp32, tmp_path, capsys):
    assert main(["export", "--model", str(fp32), "--out", str(tmp_path / "x")]) == 2
    assert "already an ONNX export: give --int8" in capsys.readouterr().err
