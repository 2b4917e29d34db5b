"""Export a model to ONNX: three graphs that together decode exactly as the PyTorch model does.

- vision.onnx:  images (N, 3, H, W) -> image_tokens (N, n, lm_width): encoder + connector, once
                per picture.
- prefill.onnx: ids (B, T), valid (B, T), image_tokens (M, lm_width) -> logits (B, V) and each
                layer's keys and values (B, heads, T, head_size): the prompt, read once.
- step.onnx:    next_ids (B,), valid (B, T), each layer's past keys and values (B, heads, T,
                head_size) -> logits (B, V), valid (B, T + 1) and the keys and values grown by one.

The KV cache is the graphs' input and output, so the caller (runtime.py) keeps it and the one
decoding loop (generate.py) drives both backends. The graphs wrap the model's own `prefill` and
`step`: nothing of the model is written twice. They are traced by torch.onnx's dynamo exporter
(torch.export) with batch and length left dynamic.

`--int8` quantizes every graph's weights to int8 with onnxruntime's dynamic quantization
(activations are quantized on the fly, per tensor): no calibration data, about 3x smaller files.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..checkpoint import CONFIG, TOKENIZER
from ..errors import TinyVLMError
from ..model.vlm import DecodeState, VisionLanguageModel
from ..tokenizer import IMAGE_ID

VISION, PREFILL, STEP = "vision.onnx", "prefill.onnx", "step.onnx"
GRAPHS = (VISION, PREFILL, STEP)
OPSET = 18


def kv_names(depth: int, kind: str) -> list[str]:
    """'past' or 'present' key and value names, layer by layer: past.0.key, past.0.value, ..."""
    return [f"{kind}.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]


class VisionGraph(nn.Module):
    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # image_features without fewer tokens, kept as one tensor: its list would fix N while tracing
        return self.model.connector(self.model.vision(images))  # (N, n, lm_width)


class PrefillGraph(nn.Module):
    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, image_tokens: torch.Tensor):
        logits, state = self.model.prefill(ids, valid, features=[image_tokens])
        return (logits, *[t for kv in state.cache for t in kv])


class StepGraph(nn.Module):
    def __init__(self, model: VisionLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, next_ids: torch.Tensor, valid: torch.Tensor, past: list[torch.Tensor]):
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, state = self.model.step(next_ids, DecodeState(cache, valid))
        return (logits, state.valid, *[t for kv in state.cache for t in kv])


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints its progress, warns about names it renames and logs what it skips;
    onnxruntime's quantizer logs every boolean tensor it leaves alone: none is the user's business."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], shapes) -> None:
    with torch.no_grad(), _quiet():
        try:
            torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, external_data=False)
        except Exception as e:  # an exporter failure is tinyvlm's bug, but the user needs one clear line
            raise TinyVLMError(f"torch.onnx could not export {path.name}: {type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e


def write_graphs(model: VisionLanguageModel, folder: Path) -> None:
    """Write the three fp32 graphs into `folder`."""
    cfg = model.cfg
    model = model.float().eval()
    B, T = torch.export.Dim("batch"), torch.export.Dim("length")
    n, L = cfg.image_tokens, cfg.lm_depth
    head = cfg.lm_width // cfg.lm_heads
    # example inputs: 2 rows (a dynamic size must not be 0 or 1 while tracing), one left-padded
    images = torch.zeros(2, 3, cfg.vit_image_size, cfg.vit_image_size)
    _export(VisionGraph(model), (images,), folder / VISION, ["images"], ["image_tokens"],
            ({0: torch.export.Dim("pictures")},))
    t = min(n + 4, cfg.lm_max_len - 1)
    ids = torch.full((2, t), 5, dtype=torch.long)
    ids[:, 1:1 + n] = IMAGE_ID
    valid = torch.ones(2, t, dtype=torch.bool)
    valid[1, 0] = False
    tokens = torch.zeros(2 * n, cfg.lm_width)
    _export(PrefillGraph(model), (ids, valid, tokens), folder / PREFILL, ["ids", "valid", "image_tokens"],
            ["logits", *kv_names(L, "present")],
            ({0: B, 1: T}, {0: B, 1: T}, {0: torch.export.Dim("image_tokens")}))
    past = [torch.zeros(2, cfg.lm_heads, 3, head) for _ in range(2 * L)]
    _export(StepGraph(model), (torch.full((2,), 5, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), past),
            folder / STEP, ["next_ids", "valid", *kv_names(L, "past")], ["logits", "valid_out", *kv_names(L, "present")],
            ({0: B}, {0: B, 1: T}, [{0: B, 2: T}] * (2 * L)))


def quantize(src: Path, dst: Path) -> None:
    """int8 weights by onnxruntime's dynamic quantization (MatMul and Gemm weights; activations are
    quantized at run time from their own range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with _quiet():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


def need_onnx() -> None:
    """One clear line when the export extra is not installed."""
    try:
        import onnx, onnxruntime, onnxscript  # noqa: F401,E401
    except ImportError as e:
        raise TinyVLMError(f"ONNX export and the onnxruntime backend need the export extra ({e.name} is missing): "
                           "pip install 'tinyvlm[export]'") from None


def export_onnx(model: str | os.PathLike, out: str | os.PathLike, int8: bool = False) -> Path:
    """Export the model folder (or training run) `model` to `out`: the three graphs (fp32, or int8
    weights), config.json (the model's, with an "export" section), tokenizer.json, training.json
    and a model card. With `int8`, `model` may also be an fp32 export, quantized without tracing
    the model again. The folder is written whole or not at all. Grounded decoding and fewer visual
    tokens are not exported (docs/export.md)."""
    need_onnx()
    from ..api import TinyVLM
    from ..card import CARD, TRAINING
    from ..checkpoint import atomic_dir, read_json
    from .runtime import is_export, load_onnx
    if Path(out).resolve() == Path(model).resolve():
        raise TinyVLMError("--out must be a new folder, not the model's own")
    from_export = is_export(model)
    if from_export:
        if not int8:
            raise TinyVLMError(f"{model} is already an ONNX export: give --int8 to quantize it, or export a model folder")
        if read_json(Path(model) / CONFIG)["export"].get("weights") != "fp32":
            raise TinyVLMError(f"{model} is not an fp32 export: quantize the fp32 export or the model folder")
        vlm = load_onnx(model)  # checks the folder is whole
    else:
        vlm = TinyVLM.from_pretrained(model, device="cpu")
    with atomic_dir(out, also=GRAPHS) as tmp:
        if from_export:
            for name in GRAPHS:
                quantize(Path(model) / name, tmp / name)
        elif int8:
            with tempfile.TemporaryDirectory() as fp32:
                write_graphs(vlm.model, Path(fp32))
                for name in GRAPHS:
                    quantize(Path(fp32) / name, tmp / name)
        else:
            write_graphs(vlm.model, tmp)
        meta = {k: v for k, v in vlm.meta().items() if k not in ("concepts", "concept_plugin")}  # no head exported
        meta["export"] = {"format": "onnx", "opset": OPSET, "weights": "int8" if int8 else "fp32",
                          "graphs": list(GRAPHS), "params": VisionLanguageModel(vlm.cfg).num_params()}
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        vlm.tokenizer.save(tmp / TOKENIZER)
        if vlm.training is not None:
            (tmp / TRAINING).write_text(json.dumps(vlm.training, indent=2))
        what = ("int8 weights by onnxruntime dynamic quantization" if int8 else "fp32") + \
            ", grounded decoding not exported"
        (tmp / CARD).write_text(vlm.card(exported=what))
    return Path(out)
