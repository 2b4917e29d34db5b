"""How well a concept head still reads its frozen encoder once the encoder's learned positions are
resized to another picture size (what `tinyvlm train --init MODEL --image-size N --freeze-encoder`
would carry over, before any training): concept F1 over (picture, concept) pairs at each size.

    OMP_NUM_THREADS=1 python benchmarks/resize_concepts.py --model MODEL --data WORLD [--n 100] [--sizes 64,96,128]

MODEL needs a concept head (a run with --concept-pretrain and --freeze-encoder); WORLD a folder
whose records a plug-in labels (picture-book world) or that has captions. Prints a markdown table.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from tinyvlm import TinyVLM
from tinyvlm.concepts import concept_f1, targets
from tinyvlm.data.dataset import open_records
from tinyvlm.errors import TinyVLMError


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=100, help="pictures (the first N single-picture records' pictures)")
    ap.add_argument("--sizes", default="64,96,128", help="picture sizes in pixels, each a multiple of the patch size")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    vlm = TinyVLM.from_pretrained(a.model, device="cpu")
    if vlm.concept_head is None:
        raise TinyVLMError(f"{a.model} has no concept head (train with --concept-pretrain and --freeze-encoder)")
    records, seen = [], set()
    for r in open_records(a.data, "train"):
        if len(r.images) == 1 and r.images[0] not in seen and len(records) < a.n:
            seen.add(r.images[0])
            records.append(r)
    index = {c: i for i, c in enumerate(vlm.concepts)}
    trained = vlm.model
    print(f"# {a.model}, trained at {vlm.cfg.vit_image_size} px; {len(records)} pictures of {a.data}")
    print("| size | grid | true positives | predicted | actual | F1 |\n|---|---|---|---|---|---|")
    for size in (int(s) for s in a.sizes.split(",")):
        cfg = replace(vlm.cfg, vit_image_size=size)  # refuses a size the patch does not divide
        grid = size // cfg.vit_patch_size
        vlm.model = trained.reconfigured(cfg).eval()
        vlm.cfg = cfg
        tp = pred = true = 0
        with torch.no_grad():
            for i in range(0, len(records), 25):
                part = records[i:i + 25]
                scores = vlm.concept_head(vlm.model.vision(vlm.pixels([r.images[0] for r in part])))
                t, p, n = concept_f1(scores, [targets(r, index, grid) for r in part])
                tp, pred, true = tp + t, pred + p, true + n
        print(f"| {size} | {grid} | {tp} | {pred} | {true} | {2 * tp / max(1, pred + true):.3f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:
        raise SystemExit(f"resize_concepts: {e}")
