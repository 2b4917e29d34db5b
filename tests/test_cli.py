"""The command line: every user mistake is one clear line and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from tinyvlm.cli import main
from tinyvlm.train import TrainConfig, train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import make_shapes_dataset
    root = tmp_path_factory.mktemp("cli")
    data = make_shapes_dataset(root / "shapes")
    train(TrainConfig(data=str(data), out=str(root / "run"), preset="nano", steps=5, batch_size=4,
                      vocab_size=300, progress=False))
    return root


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_image_names_the_file(capsys, model_dir):
    code, err = _err(capsys, ["describe", str(model_dir / "nope.png"), "--model", str(model_dir / "run")])
    assert code == 2 and len(err) == 1 and "nope.png" in err[0] and "not found" in err[0]


def test_corrupt_image_names_the_file(capsys, model_dir):
    bad = model_dir / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    code, err = _err(capsys, ["describe", str(bad), "--model", str(model_dir / "run")])
    assert code == 2 and len(err) == 1 and "broken.png" in err[0]


@pytest.mark.parametrize("ground, says", [("0.3", "concept head"), ("1.5", "ground must be a number >= 0 and < 1")])
def test_grounding_without_a_concept_head_or_out_of_range_is_one_clear_line(capsys, model_dir, ground, says):
    img = str(model_dir / "shapes/images/000.png")
    code, err = _err(capsys, ["describe", img, "--model", str(model_dir / "run"), "--ground", ground])
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_unknown_preset_lists_valid(capsys):
    code, err = _err(capsys, ["info", "--preset", "huge"])
    assert code == 2 and "nano, mini, base, large" in err[0]


def test_bad_model_geometry_or_freezing_nothing_fails_before_reading_data(capsys, tmp_path):
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "not-yet-made"), "--out", str(tmp_path / "run"),
                              "--stem", "conv", "--patch-size", "12", "--image-size", "48", "--steps", "5"])
    assert code == 2 and len(err) == 1 and "power of 2" in err[0]
    code, err = _err(capsys, ["train", "--data", str(tmp_path / "not-yet-made"), "--out", str(tmp_path / "run"),
                              "--freeze-encoder", "--steps", "5"])
    assert code == 2 and len(err) == 1 and "needs concept_pretrain" in err[0]


def test_model_without_weights(capsys, model_dir, tmp_path):
    import shutil
    d = tmp_path / "m"
    shutil.copytree(model_dir / "run" / "checkpoint", d)
    (d / "model.safetensors").unlink()
    code, err = _err(capsys, ["describe", str(model_dir / "shapes/images/000.png"), "--model", str(d)])
    assert code == 2 and len(err) == 1 and "no model.safetensors" in err[0]


def test_resume_with_different_config(capsys, model_dir):
    code, err = _err(capsys, ["train", "--data", str(model_dir / "shapes/data.jsonl"), "--out", str(model_dir / "run"),
                              "--preset", "nano", "--steps", "5", "--batch-size", "8", "--vocab-size", "300",
                              "--resume", "--quiet"])
    assert code == 2 and len(err) == 1 and "batch_size was 4, now 8" in err[0]


def test_describe_and_ask_run_from_the_shell(model_dir):
    run = [sys.executable, "-m", "tinyvlm"]
    img = str(model_dir / "shapes/images/000.png")
    out = subprocess.run(run + ["describe", img, img, "--model", str(model_dir / "run"), "--max-new-tokens", "5"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.count(img) == 2  # one line per image
    info = subprocess.run(run + ["info", "--model", str(model_dir / "run")], capture_output=True, text=True, check=True)
    assert "total" in info.stdout and "image tokens" in info.stdout


def _commands(parser, path=()):
    """Every (command path, parser) below `parser`, itself included."""
    import argparse
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def test_every_option_of_every_command_explains_itself():
    """Each option has a help line; each that takes a value says its default (argparse adds the
    ones it knows; the help says the others, e.g. "the preset's")."""
    import argparse

    from tinyvlm.cli import build_parser
    missing, no_default, n = [], [], 0
    for path, parser in _commands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            n += 1
            name = " ".join(path + (action.option_strings[0] if action.option_strings else action.dest,))
            if not (action.help or "").strip():
                missing.append(name)
                continue
            takes_value = action.option_strings and action.nargs != 0 and not action.required
            if takes_value and "default" not in formatter._get_help_string(action):
                no_default.append(name)
    assert n > 80 and not missing and not no_default, (missing, no_default)


def test_version_and_python_dash_m(capsys):
    import tinyvlm
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"tinyvlm {tinyvlm.__version__}"
    out = subprocess.run([sys.executable, "-m", "tinyvlm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tinyvlm {tinyvlm.__version__}"
