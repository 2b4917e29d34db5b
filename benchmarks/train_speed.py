"""Training and inference speed per preset: samples/s, tokens/s, peak memory and model FLOPs
utilisation (MFU) against this machine's matmul peak, measured in the same run; and describe
latency with and without the KV cache.

    python benchmarks/train_speed.py                       # mini/base/large at 64 px, patch 8
    python benchmarks/train_speed.py --image-size 224 --patch-size 16 --presets mini

Each configuration runs in its own subprocess so its peak RSS is its own. Ratios within one run
are what to compare; absolute numbers move with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def one_config(preset: str, dtype: str, image_size: int, patch_size: int, batch: int, steps: int, text_len: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from tinyvlm.config import get_preset
    from tinyvlm.model import IGNORE, VisionLanguageModel
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID

    torch.manual_seed(0)
    cfg = get_preset(preset, vit_image_size=image_size, vit_patch_size=patch_size, lm_vocab_size=4096)
    model = VisionLanguageModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prompt = [BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * cfg.image_tokens + [IMAGE_END_ID, ASSISTANT_ID]
    ids = torch.tensor([prompt + list(range(10, 10 + text_len))] * batch)
    labels = torch.full_like(ids, IGNORE)
    labels[:, len(prompt) - 1:-1] = ids[:, len(prompt):]
    images = torch.randn(batch, 3, image_size, image_size)
    bf16 = dtype == "bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(ids, images, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    return {"preset": preset, "dtype": dtype, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "samples_s": batch / dt, "tokens_s": ids.numel() / dt, "ms_step": dt * 1e3,
            "gflops_s": flops / dt / 1e9, "peak_gflops_s": peak / 1e9, "mfu": flops / dt / peak,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def latency(preset: str, image_size: int, patch_size: int, new_tokens: int, reps: int) -> dict:
    from tinyvlm.config import get_preset
    from tinyvlm.generate import Sampling, generate
    from tinyvlm.model import VisionLanguageModel
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, EOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID

    torch.manual_seed(0)
    cfg = get_preset(preset, vit_image_size=image_size, vit_patch_size=patch_size, lm_vocab_size=4096)
    model = VisionLanguageModel(cfg).eval()
    with torch.no_grad():
        model.decoder.head.weight[EOS_ID] = -1.0  # random weights must not stop early: time the full length
    prompt = [[BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * cfg.image_tokens + [IMAGE_END_ID, ASSISTANT_ID]]
    image = torch.randn(1, 3, image_size, image_size)
    out = {"preset": preset}
    for cache in (True, False):
        generate(model, prompt, image, Sampling(max_new_tokens=4), use_cache=cache)
        t = time.perf_counter()
        for _ in range(reps):
            generate(model, prompt, image, Sampling(max_new_tokens=new_tokens), use_cache=cache)
        out["ms_cached" if cache else "ms_uncached"] = (time.perf_counter() - t) / reps * 1e3
    out["speedup"] = out["ms_uncached"] / out["ms_cached"]
    return out


def table(rows: list[dict], cols: list[str]) -> str:
    fmt = lambda v: f"{v:,.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:,.0f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="mini,base,large")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=32, help="target tokens per sample (ShortDesc is ~30)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--_child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:  # run one measurement in this process and print it as JSON
        kind, preset, dtype = a._child.split(":")
        r = (one_config(preset, dtype, a.image_size, a.patch_size, a.batch, a.steps, a.text_len) if kind == "train"
             else latency(preset, a.image_size, a.patch_size, a.new_tokens, a.reps))
        print(json.dumps(r))
        return

    def child(spec):
        cmd = [sys.executable, __file__, "--_child", spec] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                              if k not in ("_child", "presets")]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    presets = a.presets.split(",")
    print(f"# training step, batch {a.batch}, {a.image_size}px / patch {a.patch_size}, {a.text_len} text tokens, "
          f"{torch.get_num_threads()} threads\n")
    rows = [child(f"train:{pr}:{dt}") for pr in presets for dt in ("fp32", "bf16")]
    print(table(rows, ["preset", "dtype", "params_M", "samples_s", "tokens_s", "ms_step", "gflops_s", "peak_gflops_s", "mfu", "peak_rss_MB"]))
    print(f"\n# describe latency, batch 1, {a.new_tokens} new tokens, greedy\n")
    print(table([child(f"latency:{pr}:fp32") for pr in presets], ["preset", "ms_cached", "ms_uncached", "speedup"]))


if __name__ == "__main__":
    main()
