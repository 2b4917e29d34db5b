"""Attention kernels on a CPU: PyTorch's fused F.scaled_dot_product_attention against the plain
softmax(q k^T / sqrt(d)) v that tinyvlm.model.transformer.attend uses for bfloat16 on a CPU.

    python benchmarks/attention.py              # kernels at mini's shapes, then the recipe's two stages
    python benchmarks/attention.py --steps 0    # kernels only

Why: in bfloat16 the fused CPU kernel was several times slower than the three plain ops at the
sizes tinyvlm trains (an encoder of 17 tokens, a decoder of 50-130), so it decided how many steps
a minutes budget bought. The float32 rows are a control: `attend` takes the fused kernel there in
both arms. Ratios within one run are what to compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from train_speed import table  # benchmarks/ is the script's directory

from tinyvlm.world.writer import write_world
from tinyvlm.model import transformer
from tinyvlm.train import CONCEPT_STAGE, TrainConfig, train

PLAIN = transformer.attend


def fused(q, k, v, mask, is_causal, dropout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout)


def kernel_ms(fn, shape: tuple, causal: bool, dtype: torch.dtype, reps: int) -> float:
    """Forward and backward of one attention call, ms."""
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    for _ in range(2):
        fn(q, k, v, None, causal, 0.0).float().sum().backward()
    t = time.perf_counter()
    for _ in range(reps):
        fn(q, k, v, None, causal, 0.0).float().sum().backward()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="training steps of each arm (0: kernels only)")
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--dtype", default="bf16", help="bf16 shows the difference; fp32 takes the fused kernel in both arms")
    a = p.parse_args()
    B = a.batch
    print(f"# one attention call, forward + backward, batch {B}, {torch.get_num_threads()} threads\n")
    rows = []
    for name, shape, causal in [("mini encoder", (B, 8, 17, 50), False),
                                ("mini decoder, short", (B, 8, 50, 12), True),
                                ("mini decoder, long", (B, 8, 110, 12), True)]:
        for dtype in (torch.float32, torch.bfloat16):
            f, pl = kernel_ms(fused, shape, causal, dtype, a.reps), kernel_ms(PLAIN, shape, causal, dtype, a.reps)
            rows.append({"call": name, "shape": "x".join(map(str, shape)), "dtype": str(dtype)[6:],
                         "fused_ms": f, "plain_ms": pl, "speedup": f / pl})
    print(table(rows, ["call", "shape", "dtype", "fused_ms", "plain_ms", "speedup"]))
    if not a.steps:
        return

    print(f"\n# the recipe's two stages (tinyvlm train, mini, 64 px / patch 16, conv stem, {a.steps} steps, "
          f"concept share 0.3, encoder frozen), on {a.scenes} world scenes\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_world(f"{tmp}/world", a.scenes, size=64, seed=0, progress=False)
        for arm, fn in (("fused", fused), ("plain", PLAIN)):
            transformer.attend = fn
            cfg = TrainConfig(data=f"{tmp}/world", out=f"{tmp}/{arm}", image_size=64, patch_size=16, stem="conv",
                              dropout=0.0, concept_pretrain=0.3, freeze_encoder=True, steps=a.steps, dtype=a.dtype,
                              eval_every=10 ** 9, save_every=10 ** 9, progress=False)
            train(cfg)
            rows.append({"attention": arm, **stage_speeds(Path(cfg.out) / "metrics.jsonl")})
        transformer.attend = PLAIN
    for r in rows:
        r["concept_x"] = r["concept_images_s"] / rows[0]["concept_images_s"]
        r["vlm_x"] = r["vlm_samples_s"] / rows[0]["vlm_samples_s"]
    print(table(rows, ["attention", "concept_images_s", "concept_x", "vlm_samples_s", "vlm_x"]))


def stage_speeds(metrics: Path) -> dict:
    """Mean images/s of the concept stage and samples/s of the VLM stage, from a run's log."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    concept = [r["images_per_s"] for r in rows if r.get("stage") == CONCEPT_STAGE and "images_per_s" in r]
    vlm = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    return {"concept_images_s": statistics.mean(concept[1:] or concept), "vlm_samples_s": statistics.mean(vlm[1:] or vlm)}


if __name__ == "__main__":
    main()
