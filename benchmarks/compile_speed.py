"""Does torch.compile pay for itself on a training step? One model, eager against compiled,
steps alternating in one process so the machine's load hits both alike; prints the compile time
and each side's samples/s. The compile is timed cold: inductor gets a fresh cache
unless --warm-cache.

    python benchmarks/compile_speed.py                      # mini, 64 px, batch 32, 1 thread
    python benchmarks/compile_speed.py --image-size 224 --shuffle 2

Random weights, AdamW, 64 answer tokens after a one-picture prompt, fp32 (as peer_speed.py).
Compiling uses inductor, which needs a C++ compiler on a CPU; the script says so and exits 0
where compiling fails.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_speed import train_batch  # noqa: E402  (benchmarks/ is the script's directory; the same batch)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mini")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--shuffle", type=int, default=1, help="pixel-shuffle factor")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-cache", action="store_true",
                   help="reuse inductor's cache of compiled kernels (default: a fresh one, as a first compile pays)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.warm_cache:
        return run(a)
    with tempfile.TemporaryDirectory(prefix="tinyvlm-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        run(a)


def run(a):
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel

    cfg = get_preset(a.preset, vit_image_size=a.image_size, vit_patch_size=a.patch_size,
                     mp_pixel_shuffle=a.shuffle, lm_vocab_size=4096, dropout=0.0)
    torch.manual_seed(0)
    model = VisionLanguageModel(cfg).train()
    ids, labels = train_batch(cfg.image_tokens, a.batch, a.text_len, cfg.lm_vocab_size)
    images = torch.randn(a.batch, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    compiled = torch.compile(model)

    def step(m):
        _, loss = m(ids, images, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    try:
        step(compiled)
    except Exception as e:  # no C++ compiler, an unsupported platform: say so, as a benchmark skip
        print(f"skipped: torch.compile failed here: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
        return
    compile_s = time.perf_counter() - t
    step(model)
    times = {"eager": [], "compiled": []}
    for _ in range(a.steps):
        for name, m in (("eager", model), ("compiled", compiled)):
            t = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# {a.preset}, {a.image_size} px, batch {a.batch}, {torch.get_num_threads()} thread(s), "
          f"median of {a.steps} alternating steps\n")
    print("| compile_s | eager_samples_s | compiled_samples_s | speed-up | steps to pay back |")
    print("|---|---|---|---|---|")
    gain = med["eager"] - med["compiled"]
    payback = f"{compile_s / gain:.0f}" if gain > 0 else "never"
    print(f"| {compile_s:.1f} | {a.batch / med['eager']:.1f} | {a.batch / med['compiled']:.1f} | "
          f"{med['eager'] / med['compiled']:.3f} | {payback} |")


if __name__ == "__main__":
    main()
