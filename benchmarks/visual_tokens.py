"""Fewer visual tokens: what each way of spending fewer costs and saves (docs/visual_tokens.md).

For each setting (all tokens; [CLS]-attention pruning keeping 50/25/10% of the patches; ToMe
merging of r tokens per encoder block; both; a trained summariser of K tokens) at each picture
size: describe latency in ms per image at batch 1 and at batch 16 (random weights, the end of
text banned, so every setting writes the same number of tokens) and how much of it at batch 16 is
reading the picture (encode + prefill, what token reduction shortens), training samples/s for the full
and the summariser model (the recipe's frozen encoder, bf16 autocast where the CPU has it; with
the encoder run each step, and with its output cached as the training loop's EncoderCache gives
it once every picture is kept), and,
given trained models at that size, quality on world scenes (tinyvlm.eval.run.evaluate without
baselines: claim precision, hallucination per thing, VQA accuracy) and, given a captions model and
its photos (a Flickr8k import), CIDEr on their validation split by the same evaluation with
`judge="captions"`, for each training-free setting at that model's size.

    OMP_NUM_THREADS=1 python benchmarks/visual_tokens.py --sizes 64,224 \\
        --model runs/red/m --summary-model runs/red/t_sum4 --budget-model runs/red/t_full \\
        --data runs/red/w64s1 --n 100 \\
        --plot docs/images/visual_tokens.png --json runs/red/visual_tokens.json
    # CIDEr rows: a 128 px Flickr8k model, its size among --sizes
    ... --sizes 128,224 --summary 4,16 --captions-model runs/flickr/m --captions-data runs/flickr/data

One thread throughout (the machine is shared): ratios within one run are what to compare.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

NEW_TOKENS = 24  # a short description's length, written by every setting alike


def settings(size: int, patch: int, summary: int) -> list[dict]:
    """(name, keep_tokens, merge, summary K) for a picture size: r is a quarter, then half, of the tokens."""
    tokens = (size // patch) ** 2 + 1
    quarter, half = tokens // 4, tokens // 2
    return [dict(name="all tokens", keep=1.0, merge=0, summary=0),
            dict(name="keep 50%", keep=0.5, merge=0, summary=0),
            dict(name="keep 25%", keep=0.25, merge=0, summary=0),
            dict(name="keep 10%", keep=0.1, merge=0, summary=0),
            dict(name=f"merge {quarter}", keep=1.0, merge=quarter, summary=0),
            dict(name=f"merge {half}", keep=1.0, merge=half, summary=0),
            dict(name=f"merge {quarter} + keep 25%", keep=0.25, merge=quarter, summary=0),
            dict(name=f"summary {summary}", keep=1.0, merge=0, summary=summary)]


def model_for(size: int, patch: int, summary: int):
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel
    torch.manual_seed(0)
    cfg = get_preset("mini", vit_image_size=size, vit_patch_size=patch, vit_stem="conv", lm_vocab_size=4096,
                     mp_summary_tokens=summary, dropout=0.0)
    return VisionLanguageModel(cfg)


def describe_call(model, size: int, batch: int):
    """A call that describes `batch` random pictures: encode, prefill, NEW_TOKENS cached steps."""
    from tinyvlm.generate import Sampling, generate
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, EOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID
    model.eval()
    with torch.no_grad():
        model.decoder.head.weight[EOS_ID] = -1.0  # random weights must not stop early
    n = model.image_token_counts(1)[0]
    prompt = [BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * n + [IMAGE_END_ID] + list(range(40, 48)) + [ASSISTANT_ID]
    images = torch.randn(batch, 3, size, size)
    return lambda: generate(model, [prompt] * batch, images, Sampling(max_new_tokens=NEW_TOKENS))


def read_call(model, size: int, batch: int):
    """The part of a describe call that token reduction shortens: encode the pictures and prefill
    the prompt (no new tokens)."""
    from tinyvlm.generate import left_pad
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID
    n = model.image_token_counts(1)[0]
    prompt = [BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * n + [IMAGE_END_ID] + list(range(40, 48)) + [ASSISTANT_ID]
    ids, valid = left_pad([prompt] * batch)
    images = torch.randn(batch, 3, size, size)
    return lambda: model.prefill(ids, valid, images)


def train_call(model, size: int, batch: int, cached: bool = False):
    """One training step with the recipe's frozen encoder (--concept-pretrain --freeze-encoder).
    `cached`: the encoder's output computed once, as the recipe's training reads it back from
    EncoderCache (train/stages.py) once every picture is kept; otherwise the encoder runs each step."""
    from tinyvlm.model import IGNORE
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID
    from tinyvlm.train.config import bf16_supported
    model.train()
    model.vision.eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    n = model.cfg.image_tokens
    prompt = [BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * n + [IMAGE_END_ID] + list(range(40, 48)) + [ASSISTANT_ID]
    ids = torch.tensor([prompt + list(range(100, 130))] * batch)  # a 30-token target
    labels = torch.full_like(ids, IGNORE)
    labels[:, len(prompt) - 1:-1] = ids[:, len(prompt):]
    images = torch.randn(batch, 3, size, size)
    bf16 = bf16_supported(torch.device("cpu"))
    with torch.no_grad():
        encoded = model.vision(images) if cached else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if cached:  # as the training loop feeds EncoderCache's encodings
                model(ids, labels=labels, features=list(model.connector(encoded)))[1].backward()
            else:
                model(ids, images, labels)[1].backward()
        opt.step()

    return step


def best_times(calls: dict, reps: int) -> dict:
    """Seconds each call takes, the best of reps after one warm-up call each. The calls take turns
    (round-robin), so a burst of the machine's other work falls on every setting alike."""
    for fn in calls.values():
        fn()
    best = {key: float("inf") for key in calls}
    for _ in range(reps):
        for key, fn in calls.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    return best


def evaluated(model_dir: str, data: str, n: int, keep: float, merge: int, judge: str = "grounded") -> dict:
    """The model's run in tinyvlm.eval.run.evaluate, without baselines, at one reduce setting."""
    from tinyvlm.eval.run import EvalConfig, evaluate
    return evaluate(EvalConfig(model=model_dir, data=data, n=n, judge=judge, baselines=False, keep_tokens=keep,
                               merge=merge, progress=False))["runs"]["model"]


def quality(model_dir: str, data: str, n: int, keep: float, merge: int) -> dict:
    """World scenes: claim precision and hallucination of the free short descriptions, VQA accuracy."""
    res = evaluated(model_dir, data, n, keep, merge)
    raw = res["short/free"]["raw"]
    return {"claim_precision": raw["claim_precision"], "hallucination": raw["hallucination_per_thing"],
            "vqa": res["vqa"]["accuracy"], "completion_precision": res["short/complete"]["raw"]["claim_precision"]}


def cider(model_dir: str, data: str, n: int, keep: float, merge: int) -> dict:
    """Captioned photos: CIDEr of the free short captions, by the one captions evaluation."""
    return {"cider": evaluated(model_dir, data, n, keep, merge, judge="captions")["short/free"]["captions"]["CIDEr"]}


def image_size(model_dir: str | None) -> int | None:
    from tinyvlm.api import TinyVLM
    return TinyVLM.from_pretrained(model_dir).cfg.vit_image_size if model_dir else None


def plot(rows: list[dict], out: str):
    from tinyvlm.plots import figure
    fig = figure(figsize=(10, 4), dpi=120)
    left, right = fig.subplots(1, 2)
    q = [r for r in rows if r.get("claim_precision") is not None]
    for key, marker in (("claim_precision", "o"), ("vqa", "s")):
        left.scatter([r["speedup_b16"] for r in q], [r[key] for r in q], marker=marker,
                     label=f"world {key.replace('_', ' ')} ({q[0]['size']} px)")
    c = [r for r in rows if r.get("cider") is not None]
    if c:
        left.scatter([r["speedup_b16"] for r in c], [r["cider"] for r in c], marker="^",
                     label=f"Flickr8k CIDEr ({c[0]['size']} px)")
    for r in q:
        left.annotate(r["name"], (r["speedup_b16"], r["claim_precision"]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    left.set(xlabel="describe speed-up at batch 16 (x all tokens)", ylabel="quality (world seed-1 scenes; Flickr8k val)",
             title="quality vs speed, trained mini" if q or c else "no quality measured")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]
        right.plot([r["speedup_b1"] for r in rs], [r["speedup_b16"] for r in rs], "o", label=f"{size} px")
        for r in rs:
            right.annotate(r["name"], (r["speedup_b1"], r["speedup_b16"]), fontsize=6, xytext=(3, 3),
                           textcoords="offset points")
    right.axhline(2, color="grey", lw=0.8, ls="--")
    right.axvline(2, color="grey", lw=0.8, ls="--")
    right.set(xlabel="speed-up at batch 1", ylabel="speed-up at batch 16", title="describe speed-up, mini")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


def table(rows: list[dict]) -> str:
    cols = [("size", "px"), ("name", "setting"), ("tokens", "image tokens"), ("ms_b1", "ms/img b1"),
            ("speedup_b1", "x b1"), ("ms_b16", "ms/img b16"), ("speedup_b16", "x b16"),
            ("read_ms_b16", "of which encode+prefill"), ("train_sps", "train samples/s"),
            ("train_sps_cached", "train samples/s, encoder cached"),
            ("claim_precision", "claim precision"), ("hallucination", "halluc./thing"), ("vqa", "VQA"),
            ("cider", "Flickr8k CIDEr")]
    fmt = lambda v: "—" if v is None else (f"{v:.3f}" if isinstance(v, float) and v < 10 else
                                           f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,224", help="picture sizes, in pixels, comma-separated")
    p.add_argument("--patch-size", type=int, default=16, help="patch size, in pixels")
    p.add_argument("--summary", default="4,16", help="summary tokens K for each size, comma-separated")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each describe call (the best is kept)")
    p.add_argument("--train-batch", type=int, default=32, help="records per training step")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (the best is kept)")
    p.add_argument("--model", help="a trained all-token model dir for the quality columns (its picture size only)")
    p.add_argument("--summary-model", dest="summary_model", help="a trained summariser model dir, same size")
    p.add_argument("--budget-model", dest="budget_model",
                   help="an all-token model trained in the summariser's wall-clock budget: a row of its own")
    p.add_argument("--data", help="world seed-1 scenes for quality (tinyvlm data world --seed 1)")
    p.add_argument("--n", type=int, default=100, help="scenes to evaluate")
    p.add_argument("--captions-model", dest="captions_model",
                   help="a trained model dir for the CIDEr column (its picture size only; e.g. a Flickr8k model)")
    p.add_argument("--captions-data", dest="captions_data",
                   help="captioned photos with a validation split (tinyvlm data import ... --val-fraction)")
    p.add_argument("--captions-n", dest="captions_n", type=int, default=1000, help="validation photos to caption")
    p.add_argument("--plot", help="write the quality-vs-speed plot here (PNG)")
    p.add_argument("--json", help="write every row here")
    a = p.parse_args()
    torch.set_num_threads(1)
    trained, captioned = image_size(a.model), image_size(a.captions_model) if a.captions_data else None
    from tinyvlm.model.reduce import ReduceConfig
    rows = []
    for size, k in zip((int(s) for s in a.sizes.split(",")), (int(s) for s in a.summary.split(","))):
        todo, first = settings(size, a.patch_size, k), len(rows)
        calls, trains = {}, {}
        for i, s in enumerate(todo):
            model = model_for(size, a.patch_size, s["summary"])
            model.reduce = ReduceConfig(s["keep"], s["merge"])
            s["tokens"] = model.image_token_counts(1)[0]
            calls[i, 1], calls[i, 16] = describe_call(model, size, 1), describe_call(model, size, 16)
            calls[i, "read"] = read_call(model, size, 16)
            if i == 0 or s["summary"]:
                trains[i] = train_call(model_for(size, a.patch_size, s["summary"]), size, a.train_batch)
                trains[i, "cached"] = train_call(model_for(size, a.patch_size, s["summary"]), size, a.train_batch,
                                                 cached=True)
        with torch.no_grad():
            secs = best_times(calls, a.reps)
        step_secs = best_times(trains, a.train_steps)
        for i, s in enumerate(todo):
            row = {"size": size, "name": s["name"], "tokens": s["tokens"], "ms_b1": secs[i, 1] * 1e3,
                   "ms_b16": secs[i, 16] / 16 * 1e3, "read_ms_b16": secs[i, "read"] / 16 * 1e3,
                   "train_sps": a.train_batch / step_secs[i] if i in trains else None,
                   "train_sps_cached": a.train_batch / step_secs[i, "cached"] if i in trains else None}
            row["speedup_b1"], row["speedup_b16"] = secs[0, 1] / secs[i, 1], secs[0, 16] / secs[i, 16]
            if size == trained and a.data:
                where = a.summary_model if s["summary"] else a.model
                if where:
                    row.update(quality(where, a.data, a.n, s["keep"], s["merge"]))
            if size == captioned and not s["summary"]:
                row.update(cider(a.captions_model, a.captions_data, a.captions_n, s["keep"], s["merge"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if s["summary"] and size == trained and a.data and a.budget_model:
                same = {**rows[first], "name": "all tokens, summary's budget", "train_sps": None, "train_sps_cached": None}
                same.update(quality(a.budget_model, a.data, a.n, 1.0, 0))
                rows.append(same)
                print(json.dumps(same), flush=True)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    if a.plot:
        plot(rows, a.plot)


if __name__ == "__main__":
    main()
