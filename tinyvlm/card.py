"""The model card: a README.md written beside the weights, so a model folder can be published as it
is and a reader learns what the model is, what it learned from, how it was trained, what was
measured and where it fails (the fields follow Mitchell et al. 2019, "Model Cards for Model
Reporting", cut to what a tinyvlm folder knows).

Everything in it comes from the folder itself: config.json, training.json (the run's TrainConfig)
and the figures the run measured. Nothing is fetched, nothing is guessed: a field the folder does
not know says so.
"""
from __future__ import annotations

import math
from .config import VLMConfig

CARD = "README.md"
TRAINING = "training.json"  # the run's TrainConfig, beside the weights
MARK = "<!-- tinyvlm model card -->"  # the first line: tells tinyvlm's own card from a person's README

# what each training field means, for the recipe table (the rest are shown by name)
_RECIPE = (("data", "training data"), ("preset", "preset"), ("steps", "optimizer steps"),
           ("minutes", "budget, minutes"), ("batch_size", "batch size"), ("grad_accum", "gradient accumulation"),
           ("lr", "peak learning rate"), ("warmup", "warmup steps"), ("weight_decay", "weight decay"),
           ("tasks", "tasks"), ("mae", "MAE stage, share of the budget"), ("mask_ratio", "MAE mask ratio"),
           ("siglip", "SigLIP stage, share of the budget"), ("concept_pretrain", "concept stage, share of the budget"),
           ("freeze_encoder", "encoder frozen after its pretraining"), ("augment", "augmentation"),
           ("dtype", "precision"), ("seed", "seed"))


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _setting(name: str, v) -> str:
    if name == "augment" and v is True:  # saved before --augment took a mode: it meant light
        return "light"
    return _value(v)


def model_card(cfg: VLMConfig, params: dict[str, int], *, name: str = "tinyvlm model", tasks=None,
               training: dict | None = None, figures: dict | None = None, concepts: int = 0,
               exported: str | None = None) -> str:
    """The card's markdown. `params`: parameters by component (VisionLanguageModel.num_params);
    `training`: the TrainConfig as saved (training.json), None when unknown; `figures`: measured
    name -> value; `exported`: what an ONNX export holds, for an export folder's card."""
    training, figures = training or {}, figures or {}
    lines = [MARK, f"# {name}", "",
             f"A small vision-language model ({params['total'] / 1e6:.1f}M parameters) built and trained from "
             "scratch with tinyvlm on a CPU: an image encoder, a connector and a causal "
             "text decoder (the NanoVLMs design, Agarwal et al., arXiv 2502.07838). It writes short English "
             "text about a picture.", ""]
    if exported:
        lines += [f"This folder is an **ONNX export** ({exported}): run it with onnxruntime through tinyvlm "
                  "(`tinyvlm describe IMAGE --backend onnxruntime --model THIS_FOLDER`).", ""]
    lines += ["## Model", "", "| part | value |", "|---|---|",
              f"| pictures | {cfg.vit_image_size} px, {cfg.vit_patch_size} px patches, {cfg.vit_stem} stem, "
              f"{cfg.image_tokens} image tokens each |",
              f"| vision encoder | {cfg.vit_depth} block(s), width {cfg.vit_width}, {params['vision']:,} parameters |",
              f"| connector | {params['connector']:,} parameters"
              f"{f', pixel-shuffle {cfg.mp_pixel_shuffle}' if cfg.mp_pixel_shuffle > 1 else ''}"
              f"{f', {cfg.mp_summary_tokens} summary tokens' if cfg.mp_summary_tokens else ''} |",
              f"| decoder | {cfg.lm_depth} layers, {cfg.lm_heads} heads, width {cfg.lm_width}, rotary positions, "
              f"{params['decoder']:,} parameters |",
              f"| vocabulary, context | {cfg.lm_vocab_size} BPE tokens, {cfg.lm_max_len} tokens |",
              f"| tasks it was trained on | {_value(tasks) if tasks else 'not recorded'} |"]
    if concepts:
        lines += [f"| concept head | {concepts} concepts, for grounded decoding (`--ground 0.5`) |"]
    lines += ["", "## Training data", ""]
    if training:
        lines += [f"`{training.get('data')}`, as the training run named it (`tinyvlm data world` makes picture-book "
                  "data from a seed; docs/data.md). What its records taught: "
                  f"{_value(tasks) if tasks else 'not recorded'}.", ""]
    else:
        lines += ["Not recorded: this folder has no training.json (it was not written by `tinyvlm train`).", ""]
    lines += ["## Recipe", ""]
    if training:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {what} | {_setting(k, training[k])} |" for k, what in _RECIPE if training.get(k) not in (None, "")]
        lines += ["", f"Every setting is in `{TRAINING}`; `tinyvlm.train.train(TrainConfig(**json.load(open("
                  f"'{TRAINING}'))))` runs the recipe again (point `data` and `out` at your folders).", ""]
    else:
        lines += ["Not recorded.", ""]
    lines += ["## Measured figures", ""]
    # an export runs on onnxruntime; tinyvlm eval and the Python calls below then need the model folder or the backend
    backend = " --backend onnxruntime" if exported else ""
    on_ort = ", backend='onnxruntime'" if exported else ""
    measure = ("`tinyvlm eval` on the model folder it was exported from; `benchmarks/export_onnx.py` for this "
               "export's parity with it" if exported else "`tinyvlm eval --model THIS_FOLDER --data TEST_DATA`")
    shown = {k: v for k, v in figures.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if shown:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {_value(v)} |" for k, v in shown.items()]
        lines += ["", f"Quality on held-out pictures: {measure} (docs/evaluation.md).", ""]
    else:
        lines += [f"None recorded with the weights. Measure them with {measure}.", ""]
    lines += ["## Use", "", "With tinyvlm installed (its repository: `pip install -e .`):", "", "```bash",
              f"tinyvlm describe picture.png --model THIS_FOLDER{backend}", "```", "", "```python",
              "from tinyvlm import TinyVLM",
              f"vlm = TinyVLM.from_pretrained('THIS_FOLDER'{on_ort})"
              "  # never touches the network",
              "vlm.describe('picture.png')", "```", "",
              "## Limits", "",
              "- It knows only what its training data shows: trained from scratch on "
              f"{'that data' if training else 'its data'}, it has no general knowledge of the world, and "
              "pictures unlike its training pictures get confident, wrong text.",
              "- Its claims are often wrong: it names things that are not there, mistakes one thing for another "
              "and gets counts wrong. Check `claim_precision` and `hallucination_per_thing` from `tinyvlm eval`.",
              f"- It reads pictures at {cfg.vit_image_size} px: small details are lost.",
              "- Its words are a young child's English; it was not made for any other language, nor to decide "
              "anything about people.", ""]
    return "\n".join(lines)

