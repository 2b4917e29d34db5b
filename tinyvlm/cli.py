"""`tinyvlm` command line: each subcommand is a thin call of a library function.

User mistakes (TinyVLMError) print one line and exit 2; nothing prints a traceback for them.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import STEMS
from .errors import TinyVLMError


def _add_sampling(p: argparse.ArgumentParser):
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ground", type=float, default=0.0, metavar="P",
                   help="never name a thing the model's concept head rates below probability P "
                        "(0 = off; 0.5, the head's own decision, is the recipe's)")


def _sampling(a, default_max: int):
    from .generate import Sampling
    return Sampling(max_new_tokens=a.max_new_tokens or default_max, temperature=a.temperature, top_k=a.top_k,
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
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(a).items() if k in names and v is not None}
    if a.tasks:
        kw["tasks"] = tuple(a.tasks.split(","))
    kw["progress"] = not a.quiet
    vlm = train(TrainConfig(**kw), resume=a.resume)
    print(f"model saved to {a.out}/checkpoint  (try: tinyvlm describe IMAGE --model {a.out})")
    return vlm


def cmd_describe(a):
    from .api import TinyVLM
    from .data.batches import MAX_TOKENS
    vlm = TinyVLM.from_pretrained(a.model, device=a.device)
    from .data.images import load_image
    for path in a.images:
        load_image(path)  # every image checked before the model spends time on any
    texts = vlm.describe(list(a.images), style=a.style, prefix=a.prefix,
                         sampling=_sampling(a, MAX_TOKENS[a.style]))
    for path, text in zip(a.images, texts):
        print(f"{path}\t{text}" if len(a.images) > 1 else text)


def cmd_ask(a):
    from .api import TinyVLM
    vlm = TinyVLM.from_pretrained(a.model, device=a.device)
    print(vlm.ask(a.image, a.question, sampling=_sampling(a, 16)))


def cmd_data_world(a):
    from .world import write_world
    out = write_world(a.out, n=a.n, size=a.size, seed=a.seed, progress=not a.quiet, max_things=a.max_things)
    print(f"wrote {a.n} scenes to {out}")


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
    from .eval.report import markdown_table, score_rows
    from .eval.run import EvalConfig, evaluate
    cfg = EvalConfig(model=a.model, data=a.data, out=a.out, judge=a.judge, n=a.n, styles=tuple(a.styles.split(",")),
                     train_data=a.train_data, baselines=not a.no_baselines, llm_base_url=a.llm_base_url,
                     llm_model=a.llm_model, llm_api_key_env=a.llm_api_key_env, ground=a.ground)
    results = evaluate(cfg)
    print(markdown_table(*score_rows(results)))
    if a.out:
        print(f"\nreport: {a.out}/report.md, {a.out}/report.html; all figures: {a.out}/results.json")


def cmd_demo(a):
    from .demo import run_demo
    run_demo(a.out, minutes=a.minutes, preset=a.preset, n_train=a.n_train, n_test=a.n_test, seed=a.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyvlm", description="Build, train, run and evaluate small vision-language models.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="parameter count by component, for a preset or a trained model")
    s.add_argument("--preset", default="mini")
    s.add_argument("--model", help="a trained model directory (instead of --preset)")
    s.add_argument("--vocab-size", type=int, default=None, help="default: the preset's reference size")
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--patch-size", type=int, default=None)
    s.add_argument("--stem", choices=STEMS, default=None)
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("train", help="train a model on a JSONL file or a dataset folder")
    s.add_argument("--data", required=True, help="JSONL of records, or a folder (picture-book world, imported shards)")
    s.add_argument("--out", required=True, help="run directory (checkpoint/, metrics.jsonl, loss.png)")
    s.add_argument("--preset", default="mini")
    s.add_argument("--val-data", dest="val_data")
    budget = s.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int)
    budget.add_argument("--minutes", type=float)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    for name, typ in (("image-size", int), ("patch-size", int), ("pixel-shuffle", int), ("max-len", int),
                      ("dropout", float), ("vocab-size", int), ("batch-size", int), ("grad-accum", int),
                      ("lr", float), ("warmup", int), ("weight-decay", float), ("grad-clip", float),
                      ("seed", int), ("eval-every", int), ("save-every", int), ("log-every", int),
                      ("eval-batches", int)):
        s.add_argument("--" + name, type=typ, dest=name.replace("-", "_"))
    s.add_argument("--stem", choices=STEMS, help="the image encoder's patch embedding: one linear "
                   "map per patch (patch, the presets' default) or small 3x3 convolutions (conv)")
    s.add_argument("--concept-pretrain", type=float, dest="concept_pretrain", metavar="SHARE",
                   help="first spend this share of the budget teaching the image encoder the data's concepts "
                        "(scene graphs or caption words), e.g. 0.2; default 0")
    s.add_argument("--freeze-encoder", action="store_true", default=None, dest="freeze_encoder",
                   help="with --concept-pretrain: keep the encoder as that stage left it while the VLM "
                        "learns to read it")
    s.add_argument("--tasks", help="comma list of short,long,qa (picture-book data); default all")
    s.add_argument("--augment", action="store_true", default=None)
    s.add_argument("--image-fit", dest="image_fit", choices=["pad", "crop"])
    s.add_argument("--dtype", choices=["auto", "fp32", "bf16"])
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train)

    for name, fn, help_ in (("describe", cmd_describe, "describe one or more images"),
                            ("ask", cmd_ask, "answer a question about an image")):
        s = sub.add_parser(name, help=help_)
        if name == "describe":
            s.add_argument("images", nargs="+")
            s.add_argument("--style", choices=["short", "long"], default="short")
            s.add_argument("--prefix", default="", help="first words of the description; the model continues")
        else:
            s.add_argument("image")
            s.add_argument("question")
        s.add_argument("--model", required=True, help="model or run directory")
        s.add_argument("--device", default="cpu")
        _add_sampling(s)
        s.set_defaults(fn=fn)

    data = sub.add_parser("data", help="make or import datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("world", help="generate picture-book world scenes with descriptions and questions")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--size", type=int, default=64, help="image size in pixels (32..512)")
    s.add_argument("--max-things", type=int, default=6, help="at most this many things a picture (1..6)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_data_world)

    s = data.add_parser("import", help="validate, dedupe, split and shard a dataset you have")
    s.add_argument("src")
    s.add_argument("--format", default="auto", choices=["auto", "coco", "csv", "jsonl", "folder", "webdataset"])
    s.add_argument("--out", required=True)
    s.add_argument("--images", default=None, help="image folder for COCO/CSV (default: images/ beside the file)")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shard-size", type=int, default=5000)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_data_import)

    s = data.add_parser("rewrite", help="rewrite reference captions in a young child's words through an LLM endpoint")
    s.add_argument("src", help="records with references (JSONL or an imported dataset folder)")
    s.add_argument("--split", default="train")
    s.add_argument("--out", required=True, help="output JSONL; a rerun resumes where it stopped")
    s.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model", required=True)
    s.add_argument("--style", choices=["short", "long"], default="short")
    s.add_argument("--api-key-env", default="OPENAI_API_KEY")
    s.add_argument("--vocab", default=None, help="word list (one per line); default: the child vocabulary shipped")
    s.add_argument("--send-image", action="store_true", help="send the picture too (vision models)")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_data_rewrite)

    s = sub.add_parser("eval", help="evaluate a model: rubric, grounded metrics, caption metrics, VQA, probes, baselines")
    s.add_argument("--model", required=True)
    s.add_argument("--data", required=True, help="evaluation records (a world folder, an imported dataset's val split, a JSONL)")
    s.add_argument("--out", default=None, help="write results.json and report.md/.html here")
    s.add_argument("--judge", choices=["grounded", "llm", "captions"], default="grounded")
    s.add_argument("--n", type=int, default=200, help="records to evaluate")
    s.add_argument("--styles", default="short", help="short, long or short,long")
    s.add_argument("--train-data", dest="train_data", help="training data for memorisation and the nearest-neighbour baseline")
    s.add_argument("--no-baselines", action="store_true")
    s.add_argument("--llm-base-url", dest="llm_base_url")
    s.add_argument("--llm-model", dest="llm_model")
    s.add_argument("--llm-api-key-env", dest="llm_api_key_env", default="OPENAI_API_KEY")
    s.add_argument("--ground", type=float, default=0.0, metavar="P",
                   help="grounded decoding for every run: never name a thing the concept head rates below P "
                        "(0 = off; 0.5 is the recipe's)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("demo", help="the 10-minute tour: make data, train, describe held-out pictures, score")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--minutes", type=float, default=8.0)
    s.add_argument("--preset", default="mini")
    s.add_argument("--n-train", type=int, default=4000)
    s.add_argument("--n-test", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
