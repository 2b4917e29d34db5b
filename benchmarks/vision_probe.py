"""How fast can the image encoder alone learn the picture-book world's things?

A diagnostic for the grounding gap in docs/evaluation.md. The VLM learns which things are in a
picture only through the words it is asked to write; here the same encoder gets the answer
directly: for every kind of thing, "is one in the picture?", and for every kind and colour, "is
there a <colour> <kind>?" (a per-patch linear head, max over patches, binary cross-entropy). If
even this is slow, the encoder (or the budget), not the decoder or the text, is what limits
grounding. Prints, per patch size, the learning curve on held-out scenes: what each minute of
training on one thread reaches.

    python benchmarks/vision_probe.py [--minutes 6] [--patches 16,8]
"""
import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyvlm.config import get_preset
from tinyvlm.data.images import preprocess
from tinyvlm.data.world import COLOURS, KINDS, render, sample_scene
from tinyvlm.errors import TinyVLMError
from tinyvlm.model.vision import VisionEncoder

KIND_LIST, COLOUR_LIST = list(KINDS), list(COLOURS)
N_KIND = len(KIND_LIST)


def scenes(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) pictures and (n, kinds + kinds * colours) 0/1 targets."""
    xs, ys = [], torch.zeros(n, N_KIND * (1 + len(COLOUR_LIST)))
    for i in range(n):
        scene = sample_scene(random.Random(f"{seed}:{i}"))
        xs.append(preprocess(render(scene, size), size))
        for t in scene.things:
            k = KIND_LIST.index(t.kind)
            ys[i, k] = 1
            ys[i, N_KIND + k * len(COLOUR_LIST) + COLOUR_LIST.index(t.colour)] = 1
    return torch.stack(xs), ys


class Probe(nn.Module):
    def __init__(self, size: int, patch: int):
        super().__init__()
        cfg = get_preset("mini", vit_image_size=size, vit_patch_size=patch, dropout=0.0)
        self.encoder, self.head = VisionEncoder(cfg), nn.Linear(cfg.vit_width, N_KIND * (1 + len(COLOUR_LIST)))

    def forward(self, x):
        return self.head(self.encoder(x)[:, 1:]).max(1).values  # (N, outputs): the best patch's score


def by_kind(t: torch.Tensor) -> torch.Tensor:
    """The kind-and-colour part of scores or targets, (N, kinds, colours)."""
    return t[:, N_KIND:].view(len(t), N_KIND, -1)


@torch.no_grad()
def score(model: Probe, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Kind F1 over (picture, kind) pairs, and colour accuracy: for each thing in a picture, is its
    true colour the top-scoring colour for its kind?"""
    logits = model(x)
    pred, true = logits[:, :N_KIND] > 0, y[:, :N_KIND] > 0
    tp = (pred & true).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + true.sum().item())
    return f1, (by_kind(logits).argmax(-1) == by_kind(y).argmax(-1))[true].float().mean().item()


def patch_list(text: str) -> list[int]:
    return [int(p) for p in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=int, default=6, help="training time per patch size")
    ap.add_argument("--patches", type=patch_list, default="16,8", help="comma list of patch sizes")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", type=int, default=8000, help="training scenes")
    a = ap.parse_args()
    for patch in a.patches:  # a bad geometry fails now, not after drawing thousands of scenes
        get_preset("mini", vit_image_size=a.size, vit_patch_size=patch)
    torch.set_num_threads(1)
    x, y = scenes(a.train, seed=0, size=a.size)
    xt, yt = scenes(500, seed=1, size=a.size)
    # a blind guess: each kind's most common training colour
    truth = by_kind(yt).argmax(-1)
    blind = (by_kind(y).sum(0).argmax(-1).expand_as(truth) == truth)[yt[:, :N_KIND] > 0].float().mean().item()
    print(f"{a.train} training and 500 held-out scenes at {a.size} px; {yt[:, :N_KIND].sum() / len(yt):.1f} "
          f"kinds per picture; colour from the kind alone (blind): {blind:.2f}")
    print(f"{'patch':>5} | {'minutes':>7} | {'steps':>6} | {'pictures seen':>13} | {'kind F1':>7} | {'colour acc':>10}")
    print("-" * 64)
    for patch in a.patches:
        torch.manual_seed(0)
        model = Probe(a.size, patch)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        g, steps, trained = torch.Generator().manual_seed(0), 0, 0.0
        for minute in range(1, a.minutes + 1):
            t0 = time.time()
            while trained + time.time() - t0 < minute * 60:
                idx = torch.randint(0, len(x), (32,), generator=g)
                loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            trained += time.time() - t0  # scoring time is not training time
            f1, colour = score(model, xt, yt)
            print(f"{patch:>5} | {minute:>7} | {steps:>6} | {steps * 32:>13,} | {f1:>7.2f} | {colour:>10.2f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:  # e.g. a patch size the image size does not divide
        raise SystemExit(f"error: {e}")
