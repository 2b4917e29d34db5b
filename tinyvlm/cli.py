"""`tinyvlm` command line: each subcommand is a thin call of a library function.

User mistakes (TinyVLMError) print one line and exit 2; nothing prints a traceback for them.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import fields

from .config import STEMS
from .errors import TinyVLMError, check_range


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Ends each option's help with its default, except where the help says it already or there
    is none to say (a flag, a required option, a default of None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.required or any(action.default is x for x in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def _add_sampling(p: argparse.ArgumentParser, max_new: str):
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"most tokens to write (default: {max_new})")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="sample from the fewest tokens whose probabilities add up to P (1 = all)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="above 1, tokens already in the text become less likely (CTRL-style; 1 = off)")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (default: none, so sampled text is not reproducible)")
    g.add_argument("--ground", type=float, default=0.0, metavar="P",
                   help="never name a thing the model's concept head rates below probability P "
                        "(0 = off; 0.5, the head's own decision, is the recipe's)")


def _add_reduce(p: argparse.ArgumentParser):
    g = p.add_argument_group("fewer visual tokens (no retraining; docs/visual_tokens.md)")
    g.add_argument("--keep-tokens", type=float, default=1.0, metavar="SHARE", dest="keep_tokens",
                   help="share of each picture's patch tokens the decoder reads, those the encoder's [CLS] "
                        "attends to most, 0 < SHARE <= 1 (1 = all)")
    g.add_argument("--merge", type=int, default=0, metavar="R",
                   help="merge R similar tokens in each encoder block, in tokens per block (0 = off)")


def _sampling(a, default_max: int):
    from .generate import Sampling
    max_new = default_max if a.max_new_tokens is None else a.max_new_tokens  # 0 is an error, not "the default"
    return Sampling(max_new_tokens=max_new, temperature=a.temperature, top_k=a.top_k,
                    top_p=a.top_p, repetition_penalty=a.repetition_penalty, seed=a.seed, ground=a.ground)


def cmd_info(a):
    from .api import TinyVLM
    from .config import PAPER_PARAMS, get_preset
    from .model import VisionLanguageModel
    if a.model:
        vlm = TinyVLM.from_pretrained(a.model)
        cfg, counts, name = vlm.cfg, vlm.model.num_params(), a.model
    else:
        cfg = get_preset(a.preset, lm_vocab_size=a.vocab_size, vit_image_size=a.image_size, vit_patch_size=a.patch_size,
                         vit_stem=a.stem)
        counts, name = VisionLanguageModel(cfg).num_params(), f"preset {a.preset}"
    print(f"{name}: {cfg.vit_image_size}px images, {cfg.vit_patch_size}px patches ({cfg.vit_stem} stem) -> "
          f"{cfg.image_tokens} image tokens, "
          f"vocabulary {cfg.lm_vocab_size}")
    for part in ("vision", "connector", "decoder", "total"):
        print(f"  {part:<10} {counts[part]:>12,}")
    paper = PAPER_PARAMS.get(a.preset) if not a.model else None
    if paper:
        print(f"  paper      {paper:>12,.0f}  ({counts['total'] / paper - 1:+.1%})")


def cmd_train(a):
    from .train import TrainConfig, train
    from .train.distributed import env_rank
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(a).items() if k in names and v is not None}
    if a.tasks:
        kw["tasks"] = tuple(a.tasks.split(","))
    kw["progress"] = not a.quiet
    vlm = train(TrainConfig(**kw), resume=a.resume)
    if env_rank() == 0:  # under torchrun, one line from rank 0
        print(f"model saved to {a.out}/checkpoint  (try: tinyvlm describe IMAGE --model {a.out})")
    return vlm


def cmd_describe(a):
    from .api import TinyVLM
    from .data.batches import MAX_TOKENS
    sampling = _sampling(a, MAX_TOKENS[a.style])  # the options are checked before the model is loaded
    vlm = TinyVLM.from_pretrained(a.model, device=a.device, keep_tokens=a.keep_tokens, merge=a.merge, backend=a.backend)
    from .data.images import load_image
    for path in a.images:
        load_image(path)  # every image checked before the model spends time on any
    texts = vlm.describe(list(a.images), style=a.style, prefix=a.prefix, sampling=sampling)
    for path, text in zip(a.images, texts):
        print(f"{path}\t{text}" if len(a.images) > 1 else text)


def cmd_ask(a):
    from .api import TinyVLM
    sampling = _sampling(a, 16)
    vlm = TinyVLM.from_pretrained(a.model, device=a.device, keep_tokens=a.keep_tokens, merge=a.merge, backend=a.backend)
    print(vlm.ask(a.image, a.question, sampling=sampling, shots=[tuple(s) for s in a.shot or ()]))


def cmd_export(a):
    from .export import export_bytes, export_onnx
    out = export_onnx(a.model, a.out, int8=a.int8)
    size = export_bytes(out)
    print(f"exported {a.model} to {out} ({'int8' if a.int8 else 'fp32'} ONNX, {size / 1e6:.1f} MB of graphs; "
          f"try: tinyvlm describe IMAGE --backend onnxruntime --model {out})")


def cmd_data_world(a):
    from .world import write_world
    out = write_world(a.out, n=a.n, size=a.size, seed=a.seed, progress=not a.quiet, max_things=a.max_things)
    print(f"wrote {a.n} scenes to {out}")


def cmd_data_icl(a):
    from .world.icl import FAMILIES, write_episodes
    families = tuple(a.families.split(",")) if a.families else FAMILIES
    out = write_episodes(a.out, n=a.n, seed=a.seed, shots=_shot_range(a.shots), families=families,
                         held_out=a.held_out, size=a.size, per_kind=a.per_kind, scenes=a.scenes, ease=a.ease,
                         drawings=a.drawings)
    print(f"wrote {a.n} episodes to {out}")


def _shot_range(text: str) -> tuple[int, int]:
    """'0..8' -> (0, 8); '4' -> (4, 4)."""
    lo, sep, hi = text.partition("..")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise TinyVLMError(f"--shots takes N or LO..HI (whole numbers), e.g. 0..8; got {text!r}") from None


def cmd_data_import(a):
    from .data.importer import import_dataset
    import_dataset(a.src, a.format, a.out, val_fraction=a.val_fraction, seed=a.seed,
                   shard_size=a.shard_size, progress=not a.quiet, image_dir=a.images)


def cmd_data_rewrite(a):
    from .data.dataset import open_records
    from .data.rewrite import load_vocab, rewrite_captions
    from .llm import ChatClient
    client = ChatClient(a.base_url, a.model, api_key_env=a.api_key_env, timeout=a.timeout)
    vocab = load_vocab(a.vocab) if a.vocab else None
    summary = rewrite_captions(open_records(a.src, a.split), client, a.out, style=a.style, vocab=vocab,
                               send_image=a.send_image, progress=not a.quiet)
    print(f"written {summary['written']}, dropped {summary['dropped']}, already done {summary['skipped_done']}")
    for image, reason in summary["failures"][:10]:
        print(f"  dropped {image}: {reason}")


def cmd_eval(a):
    from .errors import check_seed
    check_seed("seed", a.seed)
    if a.suite == "icl":
        return cmd_eval_icl(a)
    from .eval.report import markdown_table, score_rows
    from .eval.run import EvalConfig, evaluate
    cfg = EvalConfig(model=a.model, data=a.data, out=a.out, judge=a.judge, n=a.n, styles=tuple(a.styles.split(",")),
                     train_data=a.train_data, baselines=not a.no_baselines, llm_base_url=a.llm_base_url,
                     llm_model=a.llm_model, llm_api_key_env=a.llm_api_key_env, ground=a.ground,
                     keep_tokens=a.keep_tokens, merge=a.merge)
    if a.suite == "attribution":
        from .eval.attribution import AttributionConfig, evaluate_attribution, table
        results = evaluate_attribution(AttributionConfig(model=a.model, data=a.data, out=a.out, n=a.n,
                                                         explainer=a.explainer, progress=True))
        print(table(results))
        if a.out:
            print(f"\nall figures: {a.out}/attribution.json")
        return
    results = evaluate(cfg)
    print(markdown_table(*score_rows(results)))
    if a.out:
        print(f"\nreport: {a.out}/report.md, {a.out}/report.html; all figures: {a.out}/results.json")


def cmd_explain(a):
    from .api import TinyVLM
    from .explain import explain_to_folder
    methods = a.method if a.method == "all" else a.method.split(",")
    if a.layer is not None:  # checked before the model is read; the explainer says how many layers it has
        check_range("layer", a.layer, 0, integer=True, note="an encoder layer, 0 = the patch embeddings")
    vlm = TinyVLM.from_pretrained(a.model, device=a.device)
    r = explain_to_folder(vlm, a.image, a.out, text=a.text, methods=methods, layer=a.layer, explainer=a.explainer)
    print(r["text"])
    print(f"methods: {', '.join(r['methods'])}\npage: {r['page']}\ncontact sheet: {r['sheet']}\nmaps: {r['maps']}")


def cmd_train_explainer(a):
    from .explain.translator import EXPLAINER_DIR, ExplainerConfig, train_explainer
    cfg = ExplainerConfig(model=a.model, data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                          seed=a.seed, progress=not a.quiet)
    ex = train_explainer(cfg)
    print(f"explainer ({ex.layers} encoder layers, {ex.steps} steps) saved to {a.out or f'{a.model}/{EXPLAINER_DIR}'}")


def cmd_eval_icl(a):
    from .eval.icl import ICLEvalConfig, evaluate_icl, markdown
    try:
        shots = tuple(int(k) for k in a.shots.split(","))
    except ValueError:
        raise TinyVLMError(f"--shots takes a comma list of whole numbers, e.g. 0,1,2,4,8; got {a.shots!r}") from None
    results = evaluate_icl(ICLEvalConfig(model=a.model, data=a.data, out=a.out, shots=shots, n=a.n,
                                         baselines=not a.no_baselines, seed=a.seed))
    print(markdown(results))
    if a.out:
        print(f"\nreport: {a.out}/report.md, plot: {a.out}/icl.png; all figures: {a.out}/results.json")


def cmd_serve(a):
    try:
        import fastapi, uvicorn  # noqa: F401,E401
    except ImportError:
        raise TinyVLMError("tinyvlm serve needs FastAPI and uvicorn: pip install 'tinyvlm[serve]'") from None
    from .serve import serve
    from .serve.app import ServeConfig
    check_range("port", a.port, 0, 65535, integer=True)
    for name in ("max_body_mib", "max_image_mib"):  # the options' units; ServeConfig checks its bytes
        check_range(name, getattr(a, name), 1, integer=True)
    config = ServeConfig(api_key=a.api_key or os.environ.get("TINYVLM_API_KEY") or None,
                         max_body_bytes=a.max_body_mib * 2**20, max_images=a.max_images,
                         max_image_bytes=a.max_image_mib * 2**20, max_pixels=a.max_pixels, max_tokens=a.max_tokens,
                         max_batch=a.max_batch, max_queue=a.max_queue, timeout_s=a.timeout)
    if a.threads is not None:
        check_range("threads", a.threads, 1, integer=True)
    serve(a.model, host=a.host, port=a.port, config=config, device=a.device, threads=a.threads,
          keep_tokens=a.keep_tokens, merge=a.merge)


def cmd_demo(a):
    from .demo import run_demo
    run_demo(a.out, steps=a.steps, preset=a.preset, n_train=a.n_train, n_test=a.n_test, seed=a.seed)


# the train options that map onto TrainConfig fields: (flag, type, what it is, in which unit)
TRAIN_OPTIONS = (
    ("image-size", int, "input picture size, in pixels"),
    ("patch-size", int, "image patch size, in pixels"),
    ("pixel-shuffle", int, "merge each FxF block of image tokens into one before the decoder (factor F)"),
    ("summary-tokens", int, "read each picture through K learned summary tokens (+[CLS]) instead of every patch, "
                            "in tokens (0 = off)"),
    ("max-len", int, "the decoder's context, in tokens"),
    ("dropout", float, "dropout probability"),
    ("vocab-size", int, "BPE vocabulary to aim for, in tokens (the real size is what the training text supports)"),
    ("batch-size", int, "records per micro-batch, in each process (under torchrun the global batch is "
                        "batch-size x processes x grad-accum)"),
    ("grad-accum", int, "micro-batches per optimizer step (the effective batch is batch-size x grad-accum, "
                        "x processes under torchrun)"),
    ("lr", float, "peak learning rate, reached after warmup, then cosine decay to a tenth"),
    ("warmup", int, "linear warmup, in optimizer steps (at most a tenth of the budget)"),
    ("weight-decay", float, "AdamW weight decay on matrices and embeddings"),
    ("grad-clip", float, "clip the gradient's global L2 norm to this"),
    ("seed", int, "seed of data order, initialisation, dropout and augmentation"),
    ("eval-every", int, "validate every N optimizer steps"),
    ("save-every", int, "checkpoint every N optimizer steps"),
    ("log-every", int, "write a metrics.jsonl row every N optimizer steps"),
    ("eval-batches", int, "validation batches, of --batch-size records each"),
    ("dist-timeout", float, "under torchrun: how long a process waits for the others before it stops with an "
                            "error, in seconds"),
)


def _train_default(name: str) -> str:
    """What TrainConfig does when an option is not given, for the help line."""
    from .train import TrainConfig
    default = {f.name: f.default for f in fields(TrainConfig)}[name]
    return "the preset's" if default is None else str(default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyvlm", formatter_class=_Help,
                                description="Build, train, run, evaluate and serve small vision-language models.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"tinyvlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, help_: str) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help_, description=help_, formatter_class=_Help)

    s = command(sub, "info", "parameter count by component, for a preset or a trained model")
    s.add_argument("--preset", default="mini", help="model size: nano, mini, base or large")
    s.add_argument("--model", help="a trained model or run directory (default: none, --preset is counted)")
    s.add_argument("--vocab-size", type=int, default=None, help="vocabulary, in tokens (default: the preset's reference size)")
    s.add_argument("--image-size", type=int, default=None, help="input picture size, in pixels (default: the preset's)")
    s.add_argument("--patch-size", type=int, default=None, help="image patch size, in pixels (default: the preset's)")
    s.add_argument("--stem", choices=STEMS, default=None, help="the encoder's patch embedding (default: the preset's)")
    s.set_defaults(fn=cmd_info)

    s = command(sub, "train", "train a model on a JSONL file or a dataset folder")
    s.add_argument("--data", required=True, help="JSONL of records, or a folder (picture-book world, imported shards)")
    s.add_argument("--out", required=True, help="run directory (checkpoint/, metrics.jsonl, loss.png)")
    s.add_argument("--preset", default="mini", help="model size: nano, mini, base or large")
    s.add_argument("--val-data", dest="val_data", metavar="PATH",
                   help="validation records (default: DATA's val/ split, else 5%% of DATA's pictures, "
                        "held out by a hash of their file names)")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="training budget, in optimizer steps (no default: give this or --minutes)")
    budget.add_argument("--minutes", type=float,
                        help="training budget, in wall-clock minutes (no default: give this or --steps)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    for name, typ, what in TRAIN_OPTIONS:
        dest = name.replace("-", "_")
        s.add_argument("--" + name, type=typ, dest=dest, help=f"{what} (default: {_train_default(dest)})")
    s.add_argument("--stem", choices=STEMS, help="the image encoder's patch embedding: one linear "
                   "map per patch (patch) or small 3x3 convolutions (conv) (default: the preset's)")
    s.add_argument("--mae", type=float, metavar="SHARE",
                   help="first spend this share of the budget on masked-image modelling (MAE: the encoder "
                        "rebuilds hidden patches; pictures alone), e.g. 0.2 (default: 0, no MAE stage)")
    s.add_argument("--mask-ratio", type=float, dest="mask_ratio", metavar="R",
                   help="with --mae: the share of each picture's patches hidden, between 0 and 1 (default: 0.75)")
    s.add_argument("--siglip", type=float, metavar="SHARE",
                   help="then spend this share of the budget on picture-caption contrast (SigLIP's sigmoid loss; "
                        "records with a text), e.g. 0.2 (default: 0, no SigLIP stage)")
    s.add_argument("--concept-pretrain", type=float, dest="concept_pretrain", metavar="SHARE",
                   help="then spend this share of the budget teaching the image encoder the data's concepts "
                        "(scene graphs or caption words), e.g. 0.2 (default: 0, no concept stage)")
    s.add_argument("--freeze-encoder", action="store_true", default=None, dest="freeze_encoder",
                   help="after encoder pretraining: keep the encoder as those stages left it while the VLM "
                        "learns to read it")
    s.add_argument("--tasks", help="comma list of short,long,qa,icl: what picture-book records teach, and icl: "
                   "in-context episodes from --icl-data (default: short,long,qa)")
    s.add_argument("--icl-data", dest="icl_data", metavar="DIR",
                   help="in-context episodes (made by `tinyvlm data icl`), for the task icl (no default)")
    s.add_argument("--icl-share", dest="icl_share", type=float, metavar="SHARE",
                   help="with the task icl: the share of steps that train on episodes (default: 0.5)")
    s.add_argument("--init", metavar="MODEL",
                   help="start from this trained model's weights and tokenizer, e.g. to teach it episodes "
                        "(default: none, a new model)")
    from .data.images import AUGMENTS
    s.add_argument("--augment", nargs="?", const="light", choices=AUGMENTS, default=None, metavar="MODE",
                   help="jitter each training picture: light (the mode a bare --augment means: small scale, shift "
                        "and brightness; never flipped), or colour (light, and hue and saturation too where the "
                        "text the picture is read with names no colour) (default: off)")
    s.add_argument("--image-fit", dest="image_fit", choices=["pad", "crop"],
                   help="how a picture that is not square becomes one (default: pad)")
    s.add_argument("--dtype", choices=["auto", "fp32", "bf16"],
                   help="precision; auto = bf16 autocast where the hardware has it, else fp32 (default: auto)")
    s.add_argument("--device", default=None, help="auto, cpu, cuda or mps (default: auto: CUDA, then MPS, then the CPU)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train)

    from .data.batches import MAX_TOKENS
    for name, fn, help_ in (("describe", cmd_describe, "describe one or more images"),
                            ("ask", cmd_ask, "answer a question about an image")):
        s = command(sub, name, help_)
        if name == "describe":
            s.add_argument("images", nargs="+", help="image files")
            s.add_argument("--style", choices=["short", "long"], default="short",
                           help="a short description or a little story")
            s.add_argument("--prefix", default="", help="first words of the description; the model continues (default: none)")
            max_new = ", ".join(f"{n} for {k}" for k, n in MAX_TOKENS.items())
        else:
            s.add_argument("image", help="an image file")
            s.add_argument("question", help="the question, in quotes")
            s.add_argument("--shot", nargs=3, action="append", metavar=("IMAGE", "QUESTION", "ANSWER"),
                           help="an example shown first, for in-context learning; repeat for more (default: none)")
            max_new = "16"
        s.add_argument("--model", required=True, help="model or run directory")
        s.add_argument("--device", default="cpu", help="cpu, cuda or mps")
        s.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                       help="what runs the model: PyTorch, or onnxruntime on an ONNX export (`tinyvlm export`; "
                            "a model folder is exported on the fly)")
        _add_sampling(s, max_new)
        _add_reduce(s)
        s.set_defaults(fn=fn)

    s = command(sub, "export", "export a model to ONNX for onnxruntime, optionally with int8 weights (docs/export.md)")
    s.add_argument("--model", required=True, help="model or run directory (with --int8, also an fp32 export)")
    s.add_argument("--format", choices=["onnx"], default="onnx", help="the export format")
    s.add_argument("--out", required=True, help="a new folder for the graphs, config.json, tokenizer.json and the model card")
    s.add_argument("--int8", action="store_true",
                   help="int8 weights by onnxruntime's dynamic quantization: about 3x smaller, output may differ a little")
    s.set_defaults(fn=cmd_export)

    data = command(sub, "data", "make or import datasets").add_subparsers(dest="data_command", required=True,
                                                                         metavar="DATA_COMMAND")
    s = command(data, "world", "generate picture-book world scenes with descriptions and questions")
    s.add_argument("--n", type=int, default=1000, help="number of scenes")
    s.add_argument("--size", type=int, default=64, help="image size, in pixels (32..512)")
    s.add_argument("--max-things", type=int, default=6, help="at most this many things a picture (1..6)")
    s.add_argument("--seed", type=int, default=0, help="seed of the scenes (scene i comes from (seed, i))")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_data_world)

    s = command(data, "icl", "generate in-context learning episodes from the picture-book world (docs/icl.md)")
    s.add_argument("--n", type=int, default=1000, help="number of episodes (the families take turns)")
    s.add_argument("--shots", default="0..8", help="support shots per episode: N, or LO..HI drawn per episode")
    s.add_argument("--families", default=None,
                   help="comma list of binding,operator,count,matching (default: all four)")
    s.add_argument("--held-out", action="store_true", dest="held_out",
                   help="invented names from the held-out word list, which training episodes never use "
                        "(for evaluation)")
    s.add_argument("--size", type=int, default=64, help="image size, in pixels (32..512)")
    s.add_argument("--per-kind", type=int, default=40, dest="per_kind",
                   help="pictures of each kind of thing the binding and matching episodes draw from")
    s.add_argument("--scenes", type=int, default=400, help="whole scenes the count episodes draw from")
    s.add_argument("--drawings", type=int, default=2,
                   help="pictures of each digit pair (a >= b) the operator episodes draw from")
    s.add_argument("--ease", type=float, default=0.0, metavar="SHARE",
                   help="share of binding episodes that show one picture a kind (copying before kinds: a first lesson)")
    s.add_argument("--seed", type=int, default=0, help="seed of the pictures and episodes (episode i comes from (seed, i))")
    s.add_argument("--out", required=True, help="output folder (pictures, episodes.jsonl, icl.json)")
    s.set_defaults(fn=cmd_data_icl)

    s = command(data, "import", "validate, dedupe, split and shard a dataset you have")
    s.add_argument("src", help="a COCO captions JSON, a CSV, a JSONL, a folder of pictures and .txt captions, "
                               "or WebDataset .tar shards")
    s.add_argument("--format", default="auto", choices=["auto", "coco", "csv", "jsonl", "folder", "webdataset"],
                   help="the format of SRC; auto guesses it from the file name and contents")
    s.add_argument("--out", required=True, help="output folder (images/, train/, val/, import.json)")
    s.add_argument("--images", default=None, help="image folder for COCO/CSV (default: images/ beside the file)")
    s.add_argument("--val-fraction", type=float, default=0.1, help="share of the pictures held out for validation, 0 <= share < 1")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the split (0 ranks pictures by their bare names, as training's own split does)")
    s.add_argument("--shard-size", type=int, default=5000, help="records per shard file")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(fn=cmd_data_import)

    s = command(data, "rewrite", "rewrite reference captions in a young child's words through an LLM endpoint")
    s.add_argument("src", help="records with references (JSONL or an imported dataset folder)")
    s.add_argument("--split", default="train", help="which split of an imported folder to read")
    s.add_argument("--out", required=True, help="output JSONL; a rerun resumes where it stopped")
    s.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model", required=True, help="the endpoint's model name")
    s.add_argument("--style", choices=["short", "long"], default="short", help="a short description or a little story")
    s.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    s.add_argument("--vocab", default=None, help="word list (one per line) (default: the child vocabulary shipped)")
    s.add_argument("--send-image", action="store_true", help="send the picture too (vision models)")
    s.add_argument("--timeout", type=float, default=60, help="seconds to wait for each answer")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_data_rewrite)

    s = command(sub, "eval", "evaluate a model: rubric, grounded metrics, caption metrics, VQA, probes, baselines")
    s.add_argument("--model", required=True, help="model or run directory")
    s.add_argument("--data", required=True, help="evaluation records (a world folder, an imported dataset's val split, a JSONL)")
    s.add_argument("--out", default=None, help="write results.json and report.md/.html here (default: print only)")
    s.add_argument("--judge", choices=["grounded", "llm", "captions"], default="grounded",
                   help="grounded: checked against picture-book scenes; llm: an LLM endpoint; captions: BLEU/CIDEr/...")
    s.add_argument("--n", type=int, default=200, help="records to evaluate")
    s.add_argument("--styles", default="short", help="short, long or short,long")
    s.add_argument("--train-data", dest="train_data",
                   help="training data for memorisation and the nearest-neighbour baseline "
                        "(default: the data the model was trained on)")
    s.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    s.add_argument("--llm-base-url", dest="llm_base_url", help="with --judge llm: OpenAI-compatible endpoint (no default)")
    s.add_argument("--llm-model", dest="llm_model", help="with --judge llm: the endpoint's model name (no default)")
    s.add_argument("--llm-api-key-env", dest="llm_api_key_env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key")
    s.add_argument("--ground", type=float, default=0.0, metavar="P",
                   help="grounded decoding for every run: never name a thing the concept head rates below P "
                        "(0 = off; 0.5 is the recipe's)")
    s.add_argument("--suite", choices=["describe", "attribution", "icl"], default="describe",
                   help="describe: the pictures' descriptions, questions and probes; attribution: pointing game of "
                        "each explain method on the thing words of the model's descriptions (docs/explain.md); icl: "
                        "in-context learning on episodes (`tinyvlm data icl`) or a VL-ICL task folder, by VL-ICL's "
                        "protocol (docs/icl.md)")
    s.add_argument("--explainer", default=None,
                   help="with --suite attribution: a trained explainer for the devil method (default: MODEL/explainer)")
    s.add_argument("--shots", default="0,1,2,4,8", help="with --suite icl: the shot counts to compare")
    s.add_argument("--seed", type=int, default=0, help="with --suite icl: seed of the shuffled baseline and of VL-ICL's shot draws")
    _add_reduce(s)
    s.set_defaults(fn=cmd_eval)

    s = command(sub, "explain", "why the model said each word: per-word maps over the picture, an HTML page "
                                "(docs/explain.md)")
    s.add_argument("image", help="an image file")
    s.add_argument("--model", required=True, help="model or run directory")
    s.add_argument("--text", default=None, help="the text to explain (default: the model's own description)")
    s.add_argument("--method", default="all",
                   help="devil, gradient, rollout, concept, a comma list, or all (every method the model has)")
    s.add_argument("--layer", type=int, default=None,
                   help="with devil: the encoder layer to decode, 0 = patch embeddings (default: the encoder's output)")
    s.add_argument("--explainer", default=None, help="a trained explainer folder (default: MODEL/explainer)")
    s.add_argument("--out", required=True, help="folder for overlays/, contact_sheet.png, index.html, maps.json")
    s.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    s.set_defaults(fn=cmd_explain)

    s = command(sub, "train-explainer", "train DeViL's translator on a trained model's frozen encoder, for "
                                        "--method devil and layer descriptions")
    s.add_argument("--model", required=True, help="model or run directory")
    s.add_argument("--data", required=True, help="training records (the model's own training data will do)")
    s.add_argument("--out", default=None, help="the explainer's folder (default: MODEL/explainer)")
    s.add_argument("--steps", type=int, default=1200, help="training budget, in optimizer steps")
    s.add_argument("--batch-size", type=int, default=32, dest="batch_size", help="pictures a step")
    s.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    s.add_argument("--seed", type=int, default=0, help="seed of the batches, layers and locations drawn")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train_explainer)

    s = command(sub, "serve", "serve a model over HTTP: an OpenAI-compatible API and a web page (docs/serving.md)")
    s.add_argument("--model", required=True, help="model or run directory")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 opens the server to the network: set an API key)")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/ (default: $TINYVLM_API_KEY, else none)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    s.add_argument("--threads", type=int, default=None,
                   help="torch threads that decode (default: the CPU's cores less one, for the HTTP side)")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together, at most")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting, at most; more are answered 429")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take, waiting included")
    s.add_argument("--max-tokens", type=int, default=256, help="the most tokens a request may ask for")
    s.add_argument("--max-images", type=int, default=4, help="pictures in one request, at most")
    s.add_argument("--max-image-mib", type=int, default=8, help="one encoded picture, at most, in MiB")
    s.add_argument("--max-pixels", type=int, default=4096 * 4096, help="one picture, at most, in pixels")
    s.add_argument("--max-body-mib", type=int, default=16, help="a request body, at most, in MiB")
    _add_reduce(s)
    s.set_defaults(fn=cmd_serve)

    from .demo import DEMO_STEPS
    s = command(sub, "demo", "the 10-minute tour: make data, train, describe held-out pictures, score")
    s.add_argument("--out", default="runs/demo", help="folder for the data, the model and the report")
    s.add_argument("--steps", type=int, default=DEMO_STEPS, help="training budget, in optimizer steps (a "
                   "fixed count, so the demo's figures are the same on every machine)")
    s.add_argument("--preset", default="mini", help="model size: nano, mini, base or large")
    s.add_argument("--n-train", type=int, default=4000, help="picture-book scenes to train on")
    s.add_argument("--n-test", type=int, default=100, help="picture-book scenes to test on (seed + 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the training scenes and the run")
    s.set_defaults(fn=cmd_demo)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """tinyvlm's own warnings as one line, like its errors (Python's format adds a source line)."""
    if issubclass(category, UserWarning) and str(filename).startswith(_PACKAGE):
        print(f"tinyvlm: warning: {message}", file=file or sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _warning_line
    try:
        args.fn(args)
    except TinyVLMError as e:
        print(f"tinyvlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinyvlm: interrupted (a training run continues with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
