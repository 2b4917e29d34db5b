"""PyTorch against its ONNX export (fp32 and int8 weights) on onnxruntime: file size, describe
latency (batch 1, 1 thread), greedy parity with PyTorch and claim precision on held-out
picture-book pictures, in one table.

    .venv/bin/python benchmarks/export_onnx.py --model runs/demo/model --data data/world-test \\
        --out runs/export-bench

It exports the model twice (fp32, then int8 from the fp32 export) under --out, describes the first
--n pictures of --data with each backend (greedy, a ShortDesc, batches of 8), counts the pictures
whose text is identical to PyTorch's, scores each backend's texts with the data's grounded judge
(its plug-in's, as `tinyvlm eval` does; claims checked against the scene) and times `describe`
one picture at a time on --timed pictures (the median, after one warm-up call).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tinyvlm import plugins
from tinyvlm.api import TinyVLM
from tinyvlm.checkpoint import WEIGHTS, resolve
from tinyvlm.data.dataset import open_records
from tinyvlm.export import export_onnx


def megabytes(files) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model or run folder")
    p.add_argument("--data", required=True, help="picture-book test data (tinyvlm data world --seed 1)")
    p.add_argument("--out", required=True, help="folder for the two exports and results.json")
    p.add_argument("--n", type=int, default=50, help="pictures for parity and claim precision")
    p.add_argument("--timed", type=int, default=20, help="pictures timed one at a time")
    a = p.parse_args()
    torch.set_num_threads(1)  # onnxruntime takes torch's thread count (runtime.py): 1 thread each
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / "onnx-fp32", out / "onnx-int8"
    t0 = time.perf_counter()
    export_onnx(a.model, fp32)
    t1 = time.perf_counter()
    export_onnx(fp32, int8, int8=True)
    t2 = time.perf_counter()
    print(f"export: fp32 {t1 - t0:.1f} s, int8 from it {t2 - t1:.1f} s")

    records = open_records(a.data, "val").head(a.n)
    images = [r.images[0] for r in records]
    judge = plugins.judges()["grounded"].judges["grounded"]
    backends = {"PyTorch": (TinyVLM.from_pretrained(a.model), megabytes([resolve(a.model) / WEIGHTS])),
                "ONNX fp32": (TinyVLM.from_pretrained(fp32, backend="onnxruntime"), megabytes(fp32.glob("*.onnx"))),
                "ONNX int8": (TinyVLM.from_pretrained(int8, backend="onnxruntime"), megabytes(int8.glob("*.onnx")))}
    rows, reference = [], None
    for name, (vlm, size) in backends.items():
        texts = []
        for i in range(0, len(images), 8):
            texts += vlm.describe(images[i:i + 8])
        reference = reference or texts
        same = sum(x == y for x, y in zip(texts, reference))
        scored = judge(records, texts, [r.extra["short"] for r in records], [""] * len(records), None)
        vlm.describe(images[0])  # warm-up
        ms = []
        for im in images[:a.timed]:
            t = time.perf_counter()
            vlm.describe(im)
            ms.append((time.perf_counter() - t) * 1e3)
        rows.append({"backend": name, "size_mb": round(size, 1), "describe_ms": round(statistics.median(ms), 1),
                     "identical_to_pytorch": f"{same}/{len(texts)}",
                     "claim_precision": round(scored["raw"]["claim_precision"], 3),
                     "hallucination_per_thing": round(scored["raw"]["hallucination_per_thing"], 3),
                     "texts": texts})
    print(f"\n{a.model}, {len(images)} pictures of {a.data}; describe: batch 1, 1 thread, median of {a.timed}\n")
    print("| backend | file MB | describe ms/picture | greedy text identical to PyTorch | claim precision "
          "| hallucination per thing |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['size_mb']} | {r['describe_ms']} | {r['identical_to_pytorch']} | "
              f"{r['claim_precision']} | {r['hallucination_per_thing']} |")
    (out / "results.json").write_text(json.dumps({"model": a.model, "data": a.data, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
