"""Can the decoder learn where a thing is from the image tokens it gets?

A diagnostic for "Left and right" in docs/evaluation.md. From a trained model (encoder frozen, as
`--freeze-encoder` leaves it), train the connector and decoder on one question only, "Is the X on
the left or on the right?", for things clearly in one half of a picture-book scene, and score
held-out scenes of the same data (by the likelihood of each answer, so chance is 0.5). Variants
change only what the image tokens carry:

  none   the tokens as the model makes them
  code   plus a fixed 2D sine-cosine code of each patch's row and column (as in MAE)
  norm   layer-normed, so the decoder's own position embeddings are no longer drowned out

--fresh re-initialises the connector and decoder (they must then learn to find the thing too);
--single keeps scenes with one thing (nothing to find: only where it is).

    python benchmarks/read_position.py --model RUN --data w20k [--variants none,code,norm] [--steps 600] [--fresh] [--single]
"""
import argparse
import math
import random
import sys
import time

import torch
import torch.nn as nn

from tinyvlm.api import TinyVLM
from tinyvlm.data.batches import Collator, Example, ask_prompt
from tinyvlm.data.dataset import open_records
from tinyvlm.world.describe import Mention
from tinyvlm.errors import TinyVLMError


def questions(data: str, single: bool) -> list[tuple[list[str], str, str]]:
    """(images, question, answer) for each thing of a kind seen once in its scene, whose centre is
    in the left or right 40% of the picture."""
    out = []
    for r in open_records(data):
        if r.scene is None:
            raise TinyVLMError(f"{data} has records without a scene graph: this needs picture-book data "
                               "(tinyvlm data world)")
        things = r.scene["things"]
        if single and len(things) != 1:
            continue
        kinds = [t["kind"] for t in things]
        for t in things:
            cx = (t["box"][0] + t["box"][2]) / 2
            if kinds.count(t["kind"]) == 1 and not 0.4 <= cx <= 0.6:
                be = "Is" if t["count"] == 1 else "Are"
                out.append((r.images, f"{be} {Mention(t['kind'], t['count']).words('the')} on the left or on the right?",
                            "left" if cx < 0.4 else "right"))
    return out


def where_code(grid: int, width: int) -> torch.Tensor:
    """(1 + grid*grid, width): zeros for [CLS], then per patch (row-major) sines and cosines of its
    column (first half of the channels) and row (second half)."""
    q = width // 4
    freqs = 2 * math.pi / grid * 0.1 ** (torch.arange(q) / q)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    enc = lambda v: torch.cat([(v.reshape(-1, 1) * freqs).sin(), (v.reshape(-1, 1) * freqs).cos()], 1)
    code = nn.functional.pad(torch.cat([enc(cols.float()), enc(rows.float())], 1), (0, width - 4 * q))
    return torch.cat([torch.zeros(1, width), code])


def accuracy(vlm: TinyVLM, test) -> float:
    exs = [Example(imgs, ask_prompt(q), a) for imgs, q, _ in test for a in ("left", "right")]
    vlm.model.eval()
    with torch.no_grad():
        lp = vlm.logprob(exs)
    return sum((lp[2 * i] > lp[2 * i + 1]) == (ans == "left") for i, (_, _, ans) in enumerate(test)) / len(test)


def run(args, variant: str, train, test) -> list[float]:
    torch.manual_seed(args.seed)
    vlm = TinyVLM.from_pretrained(args.model)
    m, cfg = vlm.model, vlm.cfg
    if args.fresh:
        m.connector.apply(m._init_weights)
        m.decoder.apply(m._init_weights)
    extra = []
    project = m.connector.forward
    if variant == "code":
        code = where_code(math.isqrt(cfg.image_tokens - 1), cfg.lm_width)  # the grid after any pixel-shuffle
        m.connector.forward = lambda f: project(f) + code
    elif variant == "norm":
        norm = nn.LayerNorm(cfg.lm_width)
        extra = list(norm.parameters())
        m.connector.forward = lambda f: norm(project(f))
    m.vision.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad] + extra, lr=args.lr, weight_decay=0.0)
    collate, rng, curve = Collator(vlm.tokenizer, cfg), random.Random(args.seed), [accuracy(vlm, test)]
    for step in range(1, args.steps + 1):
        m.train()
        m.vision.eval()
        batch = collate([Example(imgs, ask_prompt(q), a) for imgs, q, a in rng.sample(train, args.batch_size)])
        _, loss = m(batch["input_ids"], batch["images"], batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            curve.append(accuracy(vlm, test))
    return curve


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="picture-book data with scene graphs (the last tenth of the questions is held out)")
    p.add_argument("--variants", default="none,code,norm")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--single", action="store_true")
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    qs = questions(args.data, args.single)
    cut = int(0.9 * len(qs))
    while 0 < cut < len(qs) and qs[cut][0] == qs[cut - 1][0]:  # a picture's questions stay on one side
        cut += 1
    train, test = qs[:cut], qs[cut:][: args.test]
    if len(train) < args.batch_size or not test:
        raise TinyVLMError(f"{args.data} gives {len(train)} training and {len(test)} held-out questions: "
                           f"too few for batches of {args.batch_size}")
    print(f"{len(train)} training questions, {len(test)} held out ({sum(a == 'left' for *_, a in test) / len(test):.2f} 'left')")
    print("| variant | " + " | ".join(f"step {s}" for s in range(0, args.steps + 1, args.every)) + " | s |")
    print("|---" * (args.steps // args.every + 3) + "|")
    for v in args.variants.split(","):
        t0 = time.time()
        curve = run(args, v, train, test)
        print(f"| {v} | " + " | ".join(f"{a:.2f}" for a in curve) + f" | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:
        sys.exit(f"read_position: {e}")
