"""Model directories: config.json + model.safetensors + tokenizer.json, written atomically.

A directory is written in full beside its final place and then swapped in with renames, so an
interrupted write leaves the previous checkpoint intact (and `resolve` finds it). Weights are
safetensors only: loading a model never unpickles anything. A folder is only ever replaced if it
holds nothing but a tinyvlm model or checkpoint (files.py's rules): saving into a project folder
refuses and names what is there, and never deletes it.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .card import CARD, MARK, TRAINING
from .errors import TinyVLMError
from .files import atomic_dir as _atomic_dir, check_replaceable, owned_names

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
CONCEPT_HEAD = "concept_head.safetensors"  # only beside an encoder frozen since its concept stage
RUN_CHECKPOINT = "checkpoint"  # a training run keeps its latest model in RUN/checkpoint/
# Every file name tinyvlm writes into a model or checkpoint folder: the model's, then a training
# run's (train's STATE, OPTIMIZER and CONCEPT_WEIGHTS; a test keeps the two lists in step).
MODEL_FILES = (CONFIG, WEIGHTS, TOKENIZER, CONCEPT_HEAD, CARD, TRAINING)
RUN_FILES = ("state.json", "optimizer.safetensors", "encoder_and_head.safetensors",
             "translator.safetensors", "explainer.json")  # the last two: an explainer's folder (tinyvlm/explain)
FORMAT = "tinyvlm/"  # config.json's "format" starts with it


@contextmanager
def atomic_dir(path: str | os.PathLike, also: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary directory; when the block succeeds, it replaces `path` whole. Refuses
    (TinyVLMError naming what is there) if `path` holds anything but tinyvlm's own files (MODEL_FILES,
    RUN_FILES, `also`), a config.json that is not tinyvlm's, or a README.md that is not tinyvlm's
    model card (unless `also` names it: the caller writes its own)."""
    path, also = Path(path), tuple(also)
    check_model_dir(path, also)
    with _atomic_dir(path, owned_names((*MODEL_FILES, *RUN_FILES, *also)), "a tinyvlm model") as tmp:
        yield tmp


def check_model_dir(path: str | os.PathLike, also: Iterable[str] = ()) -> None:
    """Raise the TinyVLMError `atomic_dir(path, also)` would, without writing anything. Why: a
    caller that saves after a long computation asks first, so a refused folder costs no work."""
    path, also = Path(path), tuple(also)
    if (path / CONFIG).is_file() and not _is_tinyvlm_config(path / CONFIG):
        raise TinyVLMError(f"{path} holds a {CONFIG} that is not a tinyvlm model's: tinyvlm will not "
                           f"replace it; choose an empty or new folder")
    if CARD not in also and (path / CARD).is_file() and not _is_tinyvlm_card(path / CARD):
        raise TinyVLMError(f"{path} holds a {CARD} that tinyvlm did not write: tinyvlm will not replace it; "
                           "choose an empty or new folder")
    check_replaceable(path, owned_names((*MODEL_FILES, *RUN_FILES, *also)), "a tinyvlm model")


def _is_tinyvlm_card(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == MARK
    except (OSError, UnicodeDecodeError):
        return False


def _is_tinyvlm_config(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith(FORMAT)


def resolve(path: str | os.PathLike) -> Path:
    """A model directory, a training run directory (its latest checkpoint), or a clear error."""
    p = Path(path)
    for cand in (p, p / RUN_CHECKPOINT, p.with_name(p.name + ".old"), p / (RUN_CHECKPOINT + ".old")):
        if (cand / CONFIG).is_file():
            if not (cand / WEIGHTS).is_file():
                raise TinyVLMError(f"{cand} has {CONFIG} but no {WEIGHTS}: the model has no weights")
            if not (cand / TOKENIZER).is_file():
                raise TinyVLMError(f"{cand} has no {TOKENIZER}")
            return cand
    if not p.exists():
        raise TinyVLMError(f"model directory not found: {p}")
    raise TinyVLMError(f"{p} is not a tinyvlm model: no {CONFIG} (train one with `tinyvlm train`)")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyVLMError(f"cannot read {path}: {e}") from None


def cpu_state(module) -> dict:
    """A module's weights as safetensors wants them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
