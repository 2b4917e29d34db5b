"""Does memory stay flat as a sharded dataset grows? Peak RSS for N and 10 x N records.

    python benchmarks/stream_memory.py                  # N = 2,000 and 20,000, shards of 250
    python benchmarks/stream_memory.py --n 500 --steps 10

One dataset of 10 x N records is generated once (a 32 px PNG per record, every image its own file,
captions drawn from a fixed word list, so records differ but the vocabulary does not grow); the
first N records are sharded into one folder and all 10 x N into another. For each folder, four
measurements, each in its own subprocess so its peak RSS (ru_maxrss) is its own:

  train      `tinyvlm.train.train`, preset nano, a few steps. This trains the tokenizer on every
             record, but the steps touch only steps x batch records (streamed in epoch order).
  epoch      one full pass of `RecordSource.epoch(0, seed)` over all records.
  tokenizer  `Tokenizer.train(training_texts(source))`: the pass training starts with.
  images     every record's image through the `ImageCache` training's Collator uses: what a run
             long enough to see every image holds (the cache keeps up to 50,000 images).

Each row is one folder; the last rows give 10x/1x ratios and the MB difference. The absolute
numbers include the interpreter (and torch where imported); the difference is what grows.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = ("small", "big", "tiny")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white")
THINGS = ("ball", "dog", "cat", "car", "tree", "house", "boat", "bird", "kite", "cup")
RELATIONS = ("next to", "left of", "right of", "above", "below", "near")
PLACES = ("in the park", "on the beach", "in the snow", "in a room", "by the sea")
KINDS = ("train", "epoch", "tokenizer", "images")


def caption(rng: random.Random) -> str:
    a, b = rng.sample(THINGS, 2)
    return (f"A {rng.choice(SIZES)} {rng.choice(COLOURS)} {a} is {rng.choice(RELATIONS)} "
            f"a {rng.choice(COLOURS)} {b} {rng.choice(PLACES)}.")


def make_records(image_dir: Path, n: int, size: int, seed: int):
    """n records, each with its own PNG (a coloured box on a coloured ground) and 3 captions."""
    from PIL import Image, ImageDraw

    from tinyvlm.data.records import Record

    image_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        x, y = rng.randrange(size // 2), rng.randrange(size // 2)
        ImageDraw.Draw(img).rectangle((x, y, x + size // 3, y + size // 3), fill=tuple(rng.randrange(256) for _ in range(3)))
        path = image_dir / f"{i:07d}.png"
        img.save(path)
        refs = [caption(rng) for _ in range(3)]
        yield Record(images=[str(path)], text=refs[0], references=refs)


def measure(kind: str, data: str, steps: int, batch: int, seed: int, work: str) -> dict:
    """One measurement in this process; returns what it counted and the process's peak RSS."""
    t = time.perf_counter()
    if kind == "epoch":
        from tinyvlm.data.dataset import open_records
        count = sum(1 for _ in open_records(data).epoch(0, seed))
    elif kind == "tokenizer":
        from tinyvlm.data.dataset import open_records
        from tinyvlm.tokenizer import Tokenizer
        from tinyvlm.train import training_texts
        count = Tokenizer.train(training_texts(open_records(data)), 4096).vocab_size
    elif kind == "images":
        from tinyvlm.data.batches import ImageCache
        from tinyvlm.data.dataset import open_records
        cache = ImageCache(32)
        for r in open_records(data).epoch(0, seed):
            for p in r.images:
                cache.get(p)
        count = len(cache.store)
    else:
        import torch
        from tinyvlm.train import TrainConfig, train
        torch.set_num_threads(1)  # a fair share of a machine that is busy training
        train(TrainConfig(data=data, out=work, preset="nano", steps=steps, batch_size=batch, warmup=5,
                          eval_every=steps, save_every=steps, device="cpu", seed=seed, progress=False))
        count = steps * batch
    return {"count": count, "seconds": time.perf_counter() - t,
            "peak_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(kind: str, data: str, a, work: str) -> dict:
    cmd = [sys.executable, __file__, "--_child", kind, "--_data", data, "--_work", work,
           "--steps", str(a.steps), "--batch", str(a.batch), "--seed", str(a.seed)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} on {data} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="records in the small dataset (the big one has 10x)")
    p.add_argument("--shard-size", type=int, default=250)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_child", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--_data", help=argparse.SUPPRESS)
    p.add_argument("--_work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        print(json.dumps(measure(a._child, a._data, a.steps, a.batch, a.seed, a._work)))
        return

    from tinyvlm.data.dataset import write_shards

    with tempfile.TemporaryDirectory(prefix="stream_memory-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        records = list(make_records(tmp / "images", 10 * a.n, a.image_size, a.seed))
        sets = {}
        for n in (a.n, 10 * a.n):
            write_shards(records[:n], tmp / f"data-{n}", "train", a.shard_size)  # no val/: train holds out 5%
            sets[n] = str(tmp / f"data-{n}")
        del records
        print(f"# {10 * a.n:,} records with their own {a.image_size} px PNGs, sharded in "
              f"{time.perf_counter() - t:.0f} s; shards of {a.shard_size}; train: preset nano, "
              f"{a.steps} steps x batch {a.batch} (touches {a.steps * a.batch} records), 1 thread\n")
        rows = []
        for n, data in sets.items():
            row = {"records": n, "shards": len(list(Path(data, "train").glob("shard-*.jsonl")))}
            for kind in KINDS:
                r = child(kind, data, a, str(tmp / f"run-{n}"))
                row[kind], row[kind + "_s"], row[kind + "_count"] = r["peak_MB"], r["seconds"], r["count"]
            rows.append(row)

    small, big = rows
    cols = ["records", "shards"] + [c for k in KINDS for c in (k, k + "_s")]
    head = {"records": "records", "shards": "shards", "train": "peak RSS MB (train)", "train_s": "s",
            "epoch": "peak RSS MB (full pass: epoch)", "epoch_s": "s",
            "tokenizer": "peak RSS MB (full pass: tokenizer)", "tokenizer_s": "s",
            "images": "peak RSS MB (full pass: ImageCache)", "images_s": "s"}
    print("| " + " | ".join(head[c] for c in cols) + " |")
    print("|" + "---:|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else f"{r[c]:.{2 if c.endswith('_s') else 1}f}"
                                 for c in cols) + " |")
    ratio = ["**ratio 10×/1×**", ""] + [f"**{big[k] / small[k]:.2f}×**" if k in KINDS else f"{big[k] / small[k]:.1f}×"
                                         for k in cols[2:]]
    diff = ["growth MB", ""] + [f"{big[k] - small[k]:+.1f}" if k in KINDS else "" for k in cols[2:]]
    print("| " + " | ".join(ratio) + " |")
    print("| " + " | ".join(diff) + " |")
    print(f"\nImageCache held {small['images_count']:,} and {big['images_count']:,} decoded images; "
          f"tokenizer vocabulary {small['tokenizer_count']} and {big['tokenizer_count']}.")


if __name__ == "__main__":
    main()
