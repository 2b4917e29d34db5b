"""Model directories: config.json + model.safetensors + tokenizer.json, written atomically.

A directory is written in full beside its final place and then swapped in with renames, so an
interrupted write leaves the previous checkpoint intact (and `resolve` finds it). Weights are
safetensors only: loading a model never unpickles anything.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import TinyVLMError

CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
CONCEPT_HEAD = "concept_head.safetensors"  # only beside an encoder frozen since its concept stage
RUN_CHECKPOINT = "checkpoint"  # a training run keeps its latest model in RUN/checkpoint/


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; when the block succeeds, it replaces `path` whole."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


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
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TinyVLMError(f"cannot read {path}: {e}") from None


def cpu_state(module) -> dict:
    """A module's weights as safetensors wants them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
