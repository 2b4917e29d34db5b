"""Run an ONNX export with onnxruntime: a decoding Backend (generate.py) over the three graphs
(graphs.py), so `TinyVLM` describes, asks and chats through the same decoding loop as with
PyTorch. The KV cache lives in numpy arrays between steps; PyTorch only carries the logits and
ids the loop reads.

onnxruntime uses as many threads as torch is set to (torch.get_num_threads(), which
OMP_NUM_THREADS sets), so both backends are compared on the same cores.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..card import TRAINING
from ..checkpoint import CONFIG, TOKENIZER, read_json
from ..config import VLMConfig
from ..errors import TinyVLMError
from .graphs import GRAPHS, PREFILL, STEP, VISION, export_onnx, kv_names, need_onnx


@dataclass
class OnnxState:
    """The step graph's inputs carried from the last call: keys and values per layer, and which
    cache columns are real tokens."""
    cache: list[np.ndarray]  # past.0.key, past.0.value, ...: (B, heads, T, head_size) each
    valid: np.ndarray        # (B, T) bool


class OnnxBackend:
    """The three graphs of one export folder, as a decoding Backend."""

    def __init__(self, folder: Path, cfg: VLMConfig, threads: int | None = None):
        import onnxruntime as ort
        self.cfg, self.folder = cfg, folder
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its warnings about unused initialisers are not the user's
        self.sessions = {}
        for name in GRAPHS:
            try:
                self.sessions[name] = ort.InferenceSession(str(folder / name), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own classes for a missing or corrupt file
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TinyVLMError(f"cannot load {folder / name}: {first}") from None
        self.past = kv_names(cfg.lm_depth, "past")

    def image_token_counts(self, n_images: int) -> list[int]:
        return [self.cfg.image_tokens] * n_images

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> one (n, lm_width) tensor per picture."""
        (tokens,) = self.sessions[VISION].run(None, {"images": images.float().numpy()})
        return list(torch.from_numpy(tokens))

    def prefill(self, input_ids: torch.Tensor, valid: torch.Tensor,
                features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, OnnxState]:
        tokens = (torch.cat(features) if features else torch.zeros(0, self.cfg.lm_width)).float()
        out = self.sessions[PREFILL].run(None, {"ids": input_ids.numpy(), "valid": valid.numpy(),
                                                "image_tokens": tokens.numpy()})
        return torch.from_numpy(out[0]), OnnxState(out[1:], valid.numpy())

    def step(self, next_ids: torch.Tensor, state: OnnxState) -> tuple[torch.Tensor, OnnxState]:
        feed = {"next_ids": next_ids.numpy(), "valid": state.valid, **dict(zip(self.past, state.cache))}
        out = self.sessions[STEP].run(None, feed)
        return torch.from_numpy(out[0]), OnnxState(out[2:], out[1])


def is_export(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds an ONNX export (its config.json has an "export" section)."""
    path = Path(folder) / CONFIG
    return path.is_file() and "export" in read_json(path)


def load_onnx(path: str | os.PathLike, threads: int | None = None):
    """A TinyVLM run by onnxruntime, from an export folder, or from a model folder exported (fp32)
    into a temporary folder first; onnxruntime keeps the graphs in memory, so nothing is left on disk."""
    need_onnx()
    if not is_export(path):
        with tempfile.TemporaryDirectory() as tmp:
            return load_onnx(export_onnx(path, Path(tmp) / "onnx"), threads)
    from ..api import FORMAT, TinyVLM
    from ..tokenizer import Tokenizer
    folder = Path(path)
    meta = read_json(folder / CONFIG)
    if meta.get("format") != FORMAT or meta["export"].get("format") != "onnx":
        raise TinyVLMError(f"{folder} holds a {meta.get('format', 'unknown')} "
                           f"{meta['export'].get('format', 'unknown') if isinstance(meta['export'], dict) else ''} "
                           f"export; this tinyvlm runs {FORMAT} onnx exports: export the model again")
    for name in (*GRAPHS, TOKENIZER):
        if not (folder / name).is_file():
            raise TinyVLMError(f"{folder} is an ONNX export without {name}: export the model again")
    cfg = VLMConfig.from_dict(meta.get("model", {}), strict=False)
    vlm = TinyVLM(OnnxBackend(folder, cfg, threads), Tokenizer.load(folder / TOKENIZER), meta.get("image_fit", "pad"))
    vlm.tasks = tuple(meta["tasks"]) if meta.get("tasks") else None
    vlm.figures = dict(meta.get("figures") or {})
    vlm.training = read_json(folder / TRAINING) if (folder / TRAINING).is_file() else None
    return vlm
