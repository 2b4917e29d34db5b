"""tinyvlm against huggingface/nanoVLM's model code at the same size: training samples/s, MFU against
a matmul peak measured in the same run, and describe latency / throughput with a KV cache.

    python benchmarks/peer_speed.py --quick                 # mini and base, 64 and 224 px, a few steps
    python benchmarks/peer_speed.py                         # mini, base, large; 64 and 224 px
    python benchmarks/peer_speed.py --presets mini --sizes 64 --no-describe
    python benchmarks/peer_speed.py --presets mini,base --no-train --reps 15

nanoVLM's model code is imported at run time from ../shared/peers/nanoVLM (never copied here); the
script says so and exits 0 where it is absent. Both sides are built from random weights at one
NanoVLMs preset (arXiv 2502.07838, Table 1): the same ViT (patch embedding, width, depth, heads,
4x MLP, no [CLS] pooling on nanoVLM's side), the same pixel-shuffle, the same decoder width, depth,
heads (no grouped KV heads), vocabulary and context, dropout 0. Where the two designs differ they
keep their own: nanoVLM's decoder uses RMSNorm and a SwiGLU MLP (its hidden size is set to 8/3 of
the width so its parameters match tinyvlm's 4x GELU MLP), and computes logits over every position;
tinyvlm adds a [CLS] image token and computes logits only at labelled positions. Parameters and the
FLOPs each side actually runs (torch.utils.flop_counter) are printed, so the MFU column compares
the work done, not only the time.

Training steps alternate between the two models in one process (AdamW, batch 32, 64 answer tokens
after a one-picture chat prompt), so machine noise hits both alike; samples/s is the median over
steps. Run at one thread (the default) on a shared machine: the ratio is what to read.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak, table  # noqa: E402  (benchmarks/ is the script's directory)

PEER = Path(__file__).resolve().parents[1] / ".." / "shared" / "peers" / "nanoVLM"


def native_bf16() -> bool:
    from tinyvlm.train import bf16_supported
    return bf16_supported(torch.device("cpu"))


def import_peer():
    """nanoVLM's VisionLanguageModel and VLMConfig from ../shared, or None with the reason. Its model
    file imports `data.processors.get_tokenizer` (a Hugging Face tokenizer download); a stub
    stands in, giving only the two ids its forward and generate read."""
    if not (PEER / "models" / "vision_language_model.py").exists():
        return None, f"nanoVLM's model code is not at {PEER.resolve()} (../shared is absent)"
    from tinyvlm.tokenizer import EOS_ID, IMAGE_ID
    stub = types.ModuleType("data.processors")
    stub.get_tokenizer = lambda *a, **k: types.SimpleNamespace(image_token_id=IMAGE_ID, eos_token_id=EOS_ID)
    sys.modules.setdefault("data", types.ModuleType("data"))
    sys.modules["data.processors"] = stub
    sys.path.insert(0, str(PEER.resolve()))
    from models.config import VLMConfig as PeerConfig
    from models.vision_language_model import VisionLanguageModel as PeerVLM
    return (PeerVLM, PeerConfig), ""


def build_pair(peer, preset: str, size: int, patch: int, shuffle: int, vocab: int):
    """-> (tinyvlm model, nanoVLM model, tinyvlm cfg) at the same preset, random weights, dropout 0."""
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel
    PeerVLM, PeerConfig = peer
    cfg = get_preset(preset, vit_image_size=size, vit_patch_size=patch, mp_pixel_shuffle=shuffle,
                     lm_vocab_size=vocab, dropout=0.0)
    torch.manual_seed(0)
    ours = VisionLanguageModel(cfg)
    grid = size // patch
    pcfg = PeerConfig(vit_hidden_dim=cfg.vit_width, vit_inter_dim=int(cfg.vit_width * cfg.vit_mlp_ratio),
                      vit_patch_size=patch, vit_img_size=size, vit_n_heads=cfg.vit_heads, vit_dropout=0.0,
                      vit_n_blocks=cfg.vit_depth, vit_cls_flag=False,
                      lm_hidden_dim=cfg.lm_width, lm_inter_dim=8 * (cfg.lm_width * 8 // 3 // 8),
                      lm_re_base=int(cfg.lm_rope_base), lm_max_position_embeddings=cfg.lm_max_len,
                      lm_base_vocab_size=vocab, extra_token_amount=0, lm_vocab_size=vocab,
                      lm_n_heads=cfg.lm_heads, lm_n_kv_heads=cfg.lm_heads, lm_dropout=0.0,
                      lm_n_blocks=cfg.lm_depth, lm_max_length=cfg.lm_max_len, lm_tie_weights=cfg.lm_tie_weights,
                      mp_pixel_shuffle_factor=shuffle, mp_image_token_length=(grid // shuffle) ** 2,
                      vlm_load_backbone_weights=False)
    torch.manual_seed(0)
    theirs = PeerVLM(pcfg, load_backbone=False)
    return ours, theirs, cfg


def prompt_ids(n_image_tokens: int) -> list[int]:
    from tinyvlm.tokenizer import ASSISTANT_ID, BOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, USER_ID
    return [BOS_ID, USER_ID, IMAGE_START_ID] + [IMAGE_ID] * n_image_tokens + [IMAGE_END_ID, ASSISTANT_ID]


def train_batch(n_image_tokens: int, batch: int, text_len: int, vocab: int):
    """ids and aligned labels (labels[:, t] is the token after t; -100 off the answer) (B, T)."""
    from tinyvlm.tokenizer import IGNORE, SPECIALS
    g = torch.Generator().manual_seed(0)
    prompt = prompt_ids(n_image_tokens)
    text = torch.randint(len(SPECIALS), vocab, (batch, text_len), generator=g)
    ids = torch.cat([torch.tensor(prompt).expand(batch, -1), text], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, len(prompt) - 1:-1] = ids[:, len(prompt):]
    return ids, labels


def train_row(peer, preset, size, patch, shuffle, dtype, a) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    ours, theirs, cfg = build_pair(peer, preset, size, patch, shuffle, a.vocab)
    images = torch.randn(a.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids_o, lab_o = train_batch(cfg.image_tokens, a.batch, a.text_len, a.vocab)
    ids_t, lab_t = train_batch(theirs.cfg.mp_image_token_length, a.batch, a.text_len, a.vocab)
    bf16 = dtype == "bf16"
    sides = {}
    for name, model, ids, labels in (("tinyvlm", ours, ids_o, lab_o), ("nanoVLM", theirs, ids_t, lab_t)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, ids=ids, labels=labels, opt=opt):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if model is ours:
                    _, loss = model(ids, images, labels)
                else:
                    _, loss = model(ids, images, targets=labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as fc:
            step()
        sides[name] = dict(step=step, flops=fc.get_total_flops(), times=[],
                           params=sum(p.numel() for p in model.parameters()) / 1e6)
    for _ in range(a.warmup):
        for s in sides.values():
            s["step"]()
    for _ in range(a.steps):  # alternate, so a burst of load lands on both
        for s in sides.values():
            t = time.perf_counter()
            s["step"]()
            s["times"].append(time.perf_counter() - t)
    # the peak right after the steps, so the MFU columns see the load the steps saw
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32)
    o, t = sides["tinyvlm"], sides["nanoVLM"]
    dt_o, dt_t = statistics.median(o["times"]), statistics.median(t["times"])
    return {"preset": preset, "px": size, "shuffle": shuffle, "dtype": dtype,
            "params_M ours/peer": f"{o['params']:.2f} / {t['params']:.2f}",
            "tinyvlm_samples_s": a.batch / dt_o, "nanoVLM_samples_s": a.batch / dt_t, "ratio": dt_t / dt_o,
            "GFLOP_step ours/peer": f"{o['flops'] / 1e9:.1f} / {t['flops'] / 1e9:.1f}",
            "peak_GFLOP_s": peak / 1e9, "tinyvlm_mfu": o["flops"] / dt_o / peak, "nanoVLM_mfu": t["flops"] / dt_t / peak}


def describe_row(peer, preset, size, patch, shuffle, a) -> dict:
    """Greedy decoding of a.new_tokens tokens with a KV cache (EOS made unreachable so both run the
    full length): ms per image at batch 1, images/s at a.describe_batch."""
    from tinyvlm.generate import Sampling, generate
    from tinyvlm.tokenizer import EOS_ID
    ours, theirs, cfg = build_pair(peer, preset, size, patch, shuffle, a.vocab)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for m in (ours.decoder.head, theirs.decoder.head):
            m.weight[EOS_ID] = -1.0
    s = Sampling(max_new_tokens=a.new_tokens)
    out = {"preset": preset, "px": size}
    for batch in (1, a.describe_batch):
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
        p_o, p_t = prompt_ids(cfg.image_tokens), prompt_ids(theirs.cfg.mp_image_token_length)
        ids_t = torch.tensor([p_t] * batch)
        runs = {"tinyvlm": lambda: generate(ours, [p_o] * batch, images, s),
                "nanoVLM": lambda: theirs.generate(ids_t, images, max_new_tokens=a.new_tokens, greedy=True)}
        times = {k: [] for k in runs}
        for f in runs.values():
            f()
        for _ in range(a.reps if batch == 1 else max(1, a.reps // 3)):
            for k, f in runs.items():
                t = time.perf_counter()
                n = f()
                times[k].append(time.perf_counter() - t)
            assert len(n[0]) == a.new_tokens
        med = {k: statistics.median(v) for k, v in times.items()}
        if batch == 1:
            out.update({"tinyvlm_ms": med["tinyvlm"] * 1e3, "nanoVLM_ms": med["nanoVLM"] * 1e3,
                        "latency_ratio": med["tinyvlm"] / med["nanoVLM"]})
        else:
            out.update({f"tinyvlm_img_s@{batch}": batch / med["tinyvlm"], f"nanoVLM_img_s@{batch}": batch / med["nanoVLM"],
                        "throughput_ratio": med["nanoVLM"] / med["tinyvlm"]})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="mini,base,large")
    p.add_argument("--sizes", default="64,224", help="image sizes in pixels (16 px patches)")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--shuffle-224", type=int, default=2, help="pixel-shuffle at 224 px (64 px uses none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--text-len", type=int, default=64, help="answer tokens per sample")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=12, help="timed training steps per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--describe-batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-describe", action="store_true")
    p.add_argument("--no-train", action="store_true", help="describe rows only")
    p.add_argument("--quick", action="store_true", help="mini and base only, fewer steps")
    a = p.parse_args()
    if a.quick:
        a.presets, a.steps, a.warmup, a.reps = ("mini,base" if a.presets == "mini,base,large" else a.presets), 5, 1, 3
    peer, why = import_peer()
    if peer is None:
        print(f"skipped: {why}")
        return
    torch.set_num_threads(a.threads)
    dtypes = ["fp32"] + (["bf16"] if native_bf16() else [])
    presets, sizes = a.presets.split(","), [int(s) for s in a.sizes.split(",")]
    shuffle = lambda size: a.shuffle_224 if size >= 224 else 1
    if not a.no_train:
        print(f"# training step: batch {a.batch}, {a.text_len} answer tokens, {a.patch_size} px patches, AdamW, "
              f"{torch.get_num_threads()} thread(s), median of {a.steps} alternating steps")
        print("# MFU: the FLOPs each side runs (torch.utils.flop_counter) per second, over a 1024^3 matmul's rate "
              "measured right after each row's steps (peak_GFLOP_s)"
              + ("" if "bf16" in dtypes else "; bf16 skipped: not native on this CPU (no AVX512-BF16/AMX)") + "\n")
    rows = []
    for d in ([] if a.no_train else dtypes):
        for size in sizes:
            for pr in presets:
                rows.append(train_row(peer, pr, size, a.patch_size, shuffle(size), d, a))
                print(f"  {pr} {size}px {d}: ratio {rows[-1]['ratio']:.2f}", file=sys.stderr, flush=True)
    if rows:
        print(table(rows, list(rows[0])))
    if a.no_describe:
        return
    print(f"\n# describe: greedy, {a.new_tokens} new tokens, KV cache, fp32; latency at batch 1 (median of {a.reps}), "
          f"throughput at batch {a.describe_batch}; latency_ratio = tinyvlm / nanoVLM (lower is better)\n")
    drows = [describe_row(peer, pr, size, a.patch_size, shuffle(size), a) for size in sizes for pr in presets]
    print(table(drows, list(drows[0])))


if __name__ == "__main__":
    main()
