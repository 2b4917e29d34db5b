"""Every number a user gives is checked where it is defined: the config dataclasses' __post_init__
and the library functions the CLI calls. A bad one (NaN, inf, zero or negative where that means
nothing, too large to compute with) is one clear line naming it, exit status 2; every check fires
before any data is read or any model loaded, so these tests need neither."""
import argparse
import math

import pytest

from tinyvlm.cli import build_parser, main
from tinyvlm.config import LIMITS, PRESETS, VLMConfig, get_preset
from tinyvlm.data.records import Record, iter_jsonl
from tinyvlm.errors import MAX_SEED, TinyVLMError, check_range
from tinyvlm.eval.run import EvalConfig
from tinyvlm.generate import Sampling
from tinyvlm.llm import ChatClient
from tinyvlm.train import TrainConfig

NAN, INF = "nan", "inf"
HUGE = str(10**30)


def _run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _argv(tmp_path, command: str, *options: str) -> list[str]:
    """A command line whose every other part is fine (paths that do not exist: nothing is read)."""
    x = str(tmp_path / "x")
    base = {"info": ["info"],
            "train": ["train", "--data", x, "--out", x],
            "describe": ["describe", x, "--model", x],
            "ask": ["ask", x, "what is it?", "--model", x],
            "eval": ["eval", "--model", x, "--data", x],
            "world": ["data", "world", "--out", x],
            "icl": ["data", "icl", "--out", x],
            "import": ["data", "import", x, "--out", x],
            "rewrite": ["data", "rewrite", x, "--out", x, "--base-url", "http://127.0.0.1:9", "--model", "m"],
            "demo": ["demo", "--out", x],
            "serve": ["serve", "--model", x],
            "explain": ["explain", x, "--model", x, "--out", x],
            "train-explainer": ["train-explainer", "--model", x, "--data", x]}[command]
    if command == "train" and not any(o.split("=")[0] in ("--steps", "--minutes") for o in options):
        base += ["--steps", "5"]
    return base + list(options)


CASES = [
    # sampling (describe and ask)
    ("describe", ["--temperature", NAN], "temperature"),
    ("describe", ["--temperature", INF], "temperature"),
    ("describe", ["--temperature", "-1"], "temperature"),
    ("describe", ["--max-new-tokens", "0"], "max_new_tokens"),
    ("ask", ["--max-new-tokens", "0"], "max_new_tokens"),
    ("ask", ["--max-new-tokens", "-3"], "max_new_tokens"),
    ("describe", ["--top-k", "-1"], "top_k"),
    ("describe", ["--top-p", "0"], "top_p"),
    ("describe", ["--top-p", NAN], "top_p"),
    ("describe", ["--repetition-penalty", "0"], "repetition_penalty"),
    ("describe", ["--seed", "-1"], "seed"),
    ("ask", ["--seed", str(MAX_SEED + 1)], "seed"),
    ("describe", ["--ground", "1"], "ground"),
    # train: every TrainConfig field the CLI sets
    ("train", ["--grad-accum", "0"], "grad_accum"),
    ("train", ["--grad-clip", "0"], "grad_clip"),
    ("train", ["--grad-clip", INF], "grad_clip"),
    ("train", ["--batch-size", "0"], "batch_size"),
    ("train", ["--batch-size", HUGE], "batch_size"),
    ("train", ["--lr", NAN], "lr"),
    ("train", ["--lr", "0"], "lr"),
    ("train", ["--lr", INF], "lr"),
    ("train", ["--steps", "0"], "steps"),
    ("train", ["--steps", HUGE], "steps"),
    ("train", ["--minutes", "0"], "minutes"),
    ("train", ["--minutes", NAN], "minutes"),
    ("train", ["--minutes", "1e308"], "minutes"),
    ("train", ["--warmup", "-1"], "warmup"),
    ("train", ["--weight-decay", NAN], "weight_decay"),
    ("train", ["--weight-decay", "-0.1"], "weight_decay"),
    ("train", ["--eval-every", "0"], "eval_every"),
    ("train", ["--save-every", "0"], "save_every"),
    ("train", ["--log-every", "0"], "log_every"),
    ("train", ["--eval-batches", "0"], "eval_batches"),
    ("train", ["--vocab-size", "0"], "vocab_size"),
    ("train", ["--vocab-size", "100"], "vocab_size"),
    ("train", ["--seed", "-1"], "seed"),
    ("train", ["--seed", HUGE], "seed"),
    ("train", ["--image-size", "0"], "image_size"),
    ("train", ["--patch-size", "0"], "patch_size"),
    ("train", ["--pixel-shuffle", "0"], "pixel_shuffle"),
    ("train", ["--max-len", "0"], "max_len"),
    ("train", ["--dropout", "1"], "dropout"),
    ("train", ["--dropout", NAN], "dropout"),
    ("train", ["--concept-pretrain", "1"], "concept_pretrain"),
    ("train", ["--concept-pretrain", NAN], "concept_pretrain"),
    ("train", ["--mae", "1"], "mae"),
    ("train", ["--siglip", NAN], "siglip"),
    ("train", ["--mae", "0.6", "--siglip", "0.5"], "add up to 1.1"),
    ("train", ["--mask-ratio", "0"], "mask_ratio"),
    ("train", ["--mask-ratio", "1"], "mask_ratio"),
    ("train", ["--mask-ratio", NAN], "mask_ratio"),
    # info: the model config's sizes
    ("info", ["--vocab-size", "0"], "vocab_size"),
    ("info", ["--vocab-size", HUGE], "vocab_size"),
    ("info", ["--image-size", "0"], "image_size"),
    ("info", ["--patch-size", "0"], "patch_size"),
    ("info", ["--image-size", "-32"], "image_size"),
    # eval
    ("eval", ["--n", "0"], "n must be"),
    ("eval", ["--ground", NAN], "ground"),
    ("eval", ["--ground", "1"], "ground"),
    ("eval", ["--styles", "medium"], "styles"),
    # data world / import / rewrite
    ("world", ["--n", "0"], "n must be"),
    ("world", ["--size", "0"], "size"),
    ("world", ["--size", "1024"], "size"),
    ("world", ["--max-things", "0"], "max_things"),
    ("world", ["--seed", "-1"], "seed"),
    ("import", ["--val-fraction", "1"], "val_fraction"),
    ("import", ["--val-fraction", NAN], "val_fraction"),
    ("import", ["--shard-size", "0"], "shard_size"),
    ("import", ["--seed", "-1"], "seed"),
    ("rewrite", ["--timeout", "0"], "timeout"),
    ("rewrite", ["--timeout", NAN], "timeout"),
    ("rewrite", ["--timeout", "1e300"], "timeout"),
    # demo
    ("demo", ["--steps", "0"], "steps"),
    ("demo", ["--steps", "-5"], "steps"),
    ("demo", ["--n-train", "0"], "n_train"),
    ("demo", ["--n-test", "0"], "n_test"),
    ("demo", ["--seed", "-1"], "seed"),
    ("demo", ["--seed", str(MAX_SEED)], "seed"),
]


@pytest.mark.parametrize("command, options, says", CASES, ids=[f"{c} {' '.join(o)}" for c, o, _ in CASES])
def test_a_bad_number_is_one_line_naming_the_option(capsys, tmp_path, command, options, says):
    code, err = _run(capsys, _argv(tmp_path, command, *options))
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "x").exists()  # rejected before anything was written


def _numeric_options() -> list[tuple[str, str, type]]:
    """(command, option, type) for every option of every command that takes a number."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: list[str]):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif action.type in (int, float) and action.option_strings:
                out.append((path[-1], action.option_strings[0], action.type))
    walk(build_parser(), [])
    return out


NUMERIC = _numeric_options()
SWEEP = [(c, o, v) for c, o, t in NUMERIC for v in (["-1", NAN, INF, "-inf"] if t is float else ["-1"])]


def test_the_sweep_covers_every_command():
    assert {c for c, _, _ in NUMERIC} >= {"info", "train", "describe", "ask", "eval", "world", "import", "rewrite", "demo"}


@pytest.mark.parametrize("command, option, value", SWEEP, ids=[f"{c} {o} {v}" for c, o, v in SWEEP])
def test_every_numeric_option_rejects_nan_inf_and_negatives(capsys, tmp_path, command, option, value):
    code, err = _run(capsys, _argv(tmp_path, command, f"{option}={value}"))  # = lets argparse read "-inf"
    assert code == 2 and len(err) == 1, err
    assert option.lstrip("-").replace("-", "_") in err[0], err  # it names the option


def test_zero_max_new_tokens_is_not_the_default(capsys, tmp_path):
    """`--max-new-tokens 0` used to mean "the default" on the CLI while the API refused it."""
    with pytest.raises(TinyVLMError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)
    code, err = _run(capsys, _argv(tmp_path, "describe", "--max-new-tokens", "0"))
    assert code == 2 and "max_new_tokens" in err[0]


# --- the dataclasses, directly ------------------------------------------------------------------

@pytest.mark.parametrize("field", sorted(LIMITS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -1, 10**30, 2.5])
def test_vlm_config_checks_every_number(field, value):
    if value == 2.5 and not LIMITS[field].get("integer"):
        value = -2.5  # 2.5 is a fine ratio or rope base: a fraction is wrong only for a whole number
    with pytest.raises(TinyVLMError, match=field):
        get_preset("nano", **{field: value})


def test_vlm_config_presets_are_valid_and_the_checks_come_before_the_geometry():
    for cfg in PRESETS.values():
        VLMConfig(**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__})
    with pytest.raises(TinyVLMError, match="vit_patch_size"):  # not a ZeroDivisionError
        get_preset("nano", vit_patch_size=0)
    with pytest.raises(TinyVLMError, match="mp_pixel_shuffle"):
        get_preset("nano", mp_pixel_shuffle=0)
    with pytest.raises(TinyVLMError, match="RoPE"):
        get_preset("nano", lm_width=60, lm_heads=4)  # head size 15
    with pytest.raises(TinyVLMError, match="lm_tie_weights"):
        get_preset("nano", lm_tie_weights="yes")
    with pytest.raises(TinyVLMError, match="lm_vocab_size"):
        VLMConfig.from_dict({"lm_vocab_size": 4.5})


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"data": "/nonexistent", "out": "/nonexistent", "steps": 10, **kw})


@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("steps", 2.5), ("minutes", -1.0), ("batch_size", 0), ("grad_accum", 0), ("grad_accum", True),
    ("lr", math.nan), ("lr", 2.0), ("min_lr_ratio", -0.1), ("min_lr_ratio", 1.5), ("warmup", -1),
    ("weight_decay", math.inf), ("grad_clip", 0.0), ("grad_clip", -1.0), ("concept_pretrain", -0.1),
    ("seed", -1), ("seed", 1.0), ("log_every", 0), ("eval_every", 0), ("save_every", 0), ("eval_batches", 0),
    ("vocab_size", 50), ("image_size", 0), ("patch_size", math.nan), ("pixel_shuffle", 0), ("max_len", -5),
    ("dropout", 1.0), ("augment", "yes"), ("image_fit", "stretch"),
])
def test_train_config_checks_every_field_before_reading_data(field, value):
    with pytest.raises(TinyVLMError, match=field):
        _train(**{field: value} | ({"steps": None, "minutes": value} if field == "minutes" else {}))


def test_train_config_accepts_its_edges():
    _train(warmup=0, min_lr_ratio=0.0, weight_decay=0.0, seed=MAX_SEED, grad_clip=1e-6, lr=1.0)
    _train(steps=None, minutes=0.01)


@pytest.mark.parametrize("field, value", [("n", 0), ("n", -1), ("batch_size", 0), ("max_questions", -1),
                                          ("ground", math.nan), ("ground", 1.0), ("styles", ("short", "huge")),
                                          ("styles", ())])
def test_eval_config_checks_every_number(field, value):
    with pytest.raises(TinyVLMError, match=field):
        EvalConfig(model="m", data="d", **{field: value})


def test_eval_config_accepts_no_vqa():
    assert EvalConfig(model="m", data="d", max_questions=0, styles=["short", "long"]).styles == ("short", "long")


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", math.nan), ("temperature", -0.5),
                                          ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0),
                                          ("ground", 1.0), ("seed", -1), ("seed", MAX_SEED + 1), ("seed", 0.5)])
def test_sampling_checks_every_field(field, value):
    with pytest.raises(TinyVLMError, match=field):
        Sampling(**{field: value})


@pytest.mark.parametrize("field, value", [("timeout", 0), ("timeout", math.inf), ("timeout", 1e300),
                                          ("retries", -1), ("retries", 1.5), ("backoff", -1), ("backoff", math.nan)])
def test_chat_client_checks_every_number(field, value):
    with pytest.raises(TinyVLMError, match=field):
        ChatClient("http://127.0.0.1:9", "m", **{field: value})


def test_check_range_edges():
    check_range("x", 0.5, 0, 1, lo_open=True, hi_open=True)
    for bad in (0, 1, math.nan, math.inf, -math.inf, True, "0.5", None):
        with pytest.raises(TinyVLMError, match=r"^x must be a number > 0 and < 1"):
            check_range("x", bad, 0, 1, lo_open=True, hi_open=True)
    with pytest.raises(TinyVLMError, match=r"whole number >= 0 and <= 10; got 1000000"):
        check_range("n", 10**400, 0, 10, integer=True)  # no OverflowError from math.isfinite
    with pytest.raises(TinyVLMError, match="4294967295"):  # bounds are printed whole, not as 4.29497e+09
        check_range("seed", -1, 0, MAX_SEED, integer=True)


# --- records ------------------------------------------------------------------------------------

def test_images_as_a_string_is_not_a_list_of_its_letters(tmp_path):
    with pytest.raises(ValueError, match="'images' must be a list of paths; got the string 'abc'"):
        Record.from_json({"images": "abc", "text": "a cat"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "text": "a cat"}\n{"images": "abc", "text": "a dog"}\n')
    with pytest.raises(TinyVLMError, match="bad.jsonl:2: 'images' must be a list"):
        list(iter_jsonl(bad))
    errors: list[str] = []
    assert len(list(iter_jsonl(bad, errors))) == 1 and len(errors) == 1 and "images" in errors[0]
