"""How fast can the image encoder alone learn the picture-book world's things?

A diagnostic for the grounding gap in docs/evaluation.md. The VLM learns which things are in a
picture only through the words it is asked to write; here the same encoder gets the answer
directly: for every kind of thing, "is one in the picture?", and for every kind and colour, "is
there a <colour> <kind>?" (a per-patch linear head, binary cross-entropy: on the best patch's
score, or with --dense at every patch the thing covers, as concept pretraining does). If even this
is slow, the encoder (or the budget), not the decoder or the text, is what limits grounding.
Prints, per patch embedding (stem) and patch size, the learning curve on held-out scenes: what
each minute of training on one thread reaches.

    python benchmarks/vision_probe.py [--minutes 6 | --steps 3000] [--patches 16,8] [--stems patch,conv,multi] [--dense]

`multi` tries multi-scale patches (issue 28): the conv stem's tokens and, in the same sequence,
a second conv stem's tokens of patches twice as wide (a quarter as many, their own positions), as
multi-scale ViTs mix patch sizes (Chen et al. 2021, CrossViT; Fan et al. 2021, MViT). The block's
attention lets each fine patch read the coarse shape around it; the head reads the fine patches
only, so the targets and the grid are the conv stem's.
"""
import argparse
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyvlm.world.concepts import covered_cells
from tinyvlm.config import get_preset
from tinyvlm.data.images import preprocess
from tinyvlm.world import COLOURS, KINDS, render, sample_scene
from tinyvlm.errors import TinyVLMError
from tinyvlm.model.vision import ConvStem, VisionEncoder

KIND_LIST, COLOUR_LIST = list(KINDS), list(COLOURS)
N_KIND = len(KIND_LIST)


def scenes(n: int, seed: int, size: int, grid: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) pictures and (n, grid * grid, kinds + kinds * colours) 0/1 targets: per
    patch of a grid x grid split; grid 1 is one target row for the whole picture."""
    xs, ys = [], torch.zeros(n, grid * grid, N_KIND * (1 + len(COLOUR_LIST)))
    for i in range(n):
        scene = sample_scene(random.Random(f"{seed}:{i}"))
        xs.append(preprocess(render(scene, size), size))
        for t in scene.things:
            k = KIND_LIST.index(t.kind)
            cells = covered_cells(list(t.box), grid)
            ys[i, cells, k] = 1
            ys[i, cells, N_KIND + k * len(COLOUR_LIST) + COLOUR_LIST.index(t.colour)] = 1
    return torch.stack(xs), ys


class Probe(nn.Module):
    def __init__(self, size: int, patch: int, stem: str = "patch"):
        super().__init__()
        cfg = get_preset("mini", vit_image_size=size, vit_patch_size=patch,
                         vit_stem="conv" if stem == "multi" else stem, dropout=0.0)
        self.encoder, self.head = VisionEncoder(cfg), nn.Linear(cfg.vit_width, N_KIND * (1 + len(COLOUR_LIST)))
        self.coarse = None
        if stem == "multi":  # patches twice as wide: (size / 2p)^2 more tokens, their own positions
            self.coarse = ConvStem(cfg.vit_width, 2 * patch)
            self.coarse_pos = nn.Parameter(torch.zeros(1, (size // (2 * patch)) ** 2, cfg.vit_width))

    def forward(self, x):
        enc = self.encoder
        if self.coarse is None:
            return self.head(enc(x)[:, 1:])  # (N, patches, outputs)
        fine = enc.embed(x)  # (N, 1 + P, C): [CLS] and the fine patches
        h = torch.cat([fine, self.coarse(x).flatten(2).transpose(1, 2) + self.coarse_pos], dim=1)
        for block in enc.blocks:
            h, _, _ = block(h)
        return self.head(enc.ln(h)[:, 1:fine.shape[1]])  # the fine patches only: (N, P, outputs)


def by_kind(t: torch.Tensor) -> torch.Tensor:
    """The kind-and-colour part of scores or targets, (N, kinds, colours)."""
    return t[:, N_KIND:].view(len(t), N_KIND, -1)


@torch.no_grad()
def score(model: Probe, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Kind F1 over (picture, kind) pairs, and colour accuracy: for each thing in a picture, is its
    true colour the top-scoring colour for its kind?"""
    model.eval()  # batch norm (the conv stem) scores with its running statistics
    logits, y = model(x).max(1).values, y.amax(1)  # the best patch's score, and the picture's truth
    model.train()
    pred, true = logits[:, :N_KIND] > 0, y[:, :N_KIND] > 0
    tp = (pred & true).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + true.sum().item())
    return f1, (by_kind(logits).argmax(-1) == by_kind(y).argmax(-1))[true].float().mean().item()


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def patch_list(text: str) -> list[int]:
    return [positive(p) for p in text.split(",")]


def stem_list(text: str) -> list[str]:
    return text.split(",")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=positive, default=6, help="training time per encoder (stem and patch size)")
    ap.add_argument("--patches", type=patch_list, default="16,8", help="comma list of patch sizes")
    ap.add_argument("--steps", type=positive, help="train this many steps per encoder, scored every fifth of them "
                    "(instead of --minutes: the same work whatever the machine's load)")
    ap.add_argument("--stems", type=stem_list, default="patch",
                    help="comma list of patch embeddings: patch, conv, multi (conv plus patches twice as wide)")
    ap.add_argument("--dense", action="store_true", help="per-patch targets (where each thing is), not per picture")
    ap.add_argument("--size", type=positive, default=64)
    ap.add_argument("--train", type=positive, default=8000, help="training scenes")
    a = ap.parse_args()
    runs = [(stem, patch) for stem in a.stems for patch in a.patches]
    for stem, patch in runs:  # a bad geometry fails now, not after drawing thousands of scenes
        if stem not in ("patch", "conv", "multi"):
            raise TinyVLMError(f"unknown stem '{stem}': use patch, conv or multi")
        get_preset("mini", vit_image_size=a.size, vit_patch_size=patch, vit_stem="conv" if stem == "multi" else stem)
        if stem == "multi":  # and the coarse stem's patches, twice as wide
            try:
                get_preset("mini", vit_image_size=a.size, vit_patch_size=2 * patch, vit_stem="conv")
            except TinyVLMError as e:
                raise TinyVLMError(f"--stems multi at patch {patch} also needs patches of {2 * patch}: {e}") from None
    torch.set_num_threads(1)
    data = {}  # patch size -> training and held-out scenes (targets depend on the patch grid)
    for patch in a.patches:
        grid = a.size // patch if a.dense else 1
        data[patch] = scenes(a.train, 0, a.size, grid), scenes(500, 1, a.size, grid)
    (x, y), (xt, yt) = data[a.patches[0]]
    y, yt = y.amax(1), yt.amax(1)
    # a blind guess: each kind's most common training colour
    truth = by_kind(yt).argmax(-1)
    blind = (by_kind(y).sum(0).argmax(-1).expand_as(truth) == truth)[yt[:, :N_KIND] > 0].float().mean().item()
    print(f"{a.train} training and 500 held-out scenes at {a.size} px; {yt[:, :N_KIND].sum() / len(yt):.1f} "
          f"kinds per picture; colour from the kind alone (blind): {blind:.2f}")
    print(f"{'stem':>5} | {'patch':>5} | {'minutes':>7} | {'steps':>6} | {'pictures seen':>13} | {'kind F1':>7} | "
          f"{'colour acc':>10}")
    print("-" * 72)
    for stem, patch in runs:
        (x, y), (xt, yt) = data[patch]
        torch.manual_seed(0)
        model = Probe(a.size, patch, stem)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        g, steps, trained = torch.Generator().manual_seed(0), 0, 0.0
        rounds = 5 if a.steps else a.minutes
        for minute in range(1, rounds + 1):
            t0 = time.time()
            while (steps < a.steps * minute // rounds if a.steps
                   else trained + time.time() - t0 < minute * 60):
                idx = torch.randint(0, len(x), (32,), generator=g)
                scores = model(x[idx]) if a.dense else model(x[idx]).max(1, keepdim=True).values
                loss = F.binary_cross_entropy_with_logits(scores, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
            trained += time.time() - t0  # scoring time is not training time
            f1, colour = score(model, xt, yt)
            print(f"{stem:>5} | {patch:>5} | {trained / 60:>7.1f} | {steps:>6} | {steps * 32:>13,} | {f1:>7.2f} | {colour:>10.2f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:  # e.g. a patch size the image size does not divide
        raise SystemExit(f"error: {e}")
