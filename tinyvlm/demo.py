"""`tinyvlm demo`: the whole loop in under ten minutes on a 2-core CPU, install included — make
picture-book data, train the mini model, describe pictures from a seed it never saw, and score what
it wrote.

Rerunning continues an unfinished run (or reuses a finished one) instead of starting over.
"""
from __future__ import annotations

import time
from pathlib import Path

from .api import TinyVLM
from .data.dataset import open_records
from .world import parse_claims, verify, write_world
from .eval.report import markdown_table, score_rows
from .eval.rubric import RUBRIC
from .eval.run import EvalConfig, evaluate
from .checkpoint import RUN_CHECKPOINT
from .errors import MAX_COUNT, MAX_SEED, check_range
from .train import CONCEPT_STAGE, STATE, TrainConfig, train

# 64 px pictures in 16 px patches (17 image tokens) train ~3.7x faster than 8 px patches, and in a
# few minutes more samples beat finer patches; dropout only slows a model this far from overfitting.
# The encoder first learns each picture's concepts, then stays fixed while the decoder learns to
# read it (docs/training.md, "Freezing the encoder afterwards").
SUMMARY = ("run", "setting", *RUBRIC, "claim_precision", "hallucination_per_thing", "vqa",
           "probe")  # the full table is in the report
DEMO_MODEL = dict(image_size=64, patch_size=16, stem="conv", concept_pretrain=0.3, freeze_encoder=True,
                  dropout=0.0, tasks=("short", "qa"), batch_size=32, eval_every=200, save_every=200,
                  dtype="fp32")  # bf16 autocast (auto's choice where the CPU has it natively) gives other figures


# 840 concept + 1,960 VLM steps: `make demo` on a fresh clone takes about 9 minutes on 2 AVX2 cores,
# install included (README; docs/speed.md: ~0.19 s a concept step, ~0.11 s a VLM step now that the
# frozen encoder's outputs are kept). The short budget costs quality against 5,200 steps (17 minutes):
# claim precision ~0.75 against 0.81, hallucination ~0.6 against 0.36 (docs/speed.md#the-budget).
DEMO_STEPS = 2800


def run_demo(out: str = "runs/demo", steps: int = DEMO_STEPS, preset: str = "mini", n_train: int = 4000,
             n_test: int = 100, seed: int = 0) -> dict:
    t0 = time.time()
    out = Path(out)
    train_dir, test_dir, run = out / "world-train", out / "world-test", out / "model"
    # every option is checked before the first scene is drawn
    check_range("n_train", n_train, 1, MAX_COUNT, integer=True, note="scenes")
    check_range("n_test", n_test, 1, MAX_COUNT, integer=True, note="scenes")
    check_range("seed", seed, 0, MAX_SEED - 1, integer=True, note="the test scenes use seed + 1")
    train_cfg = TrainConfig(data=str(train_dir), out=str(run), preset=preset, steps=steps, seed=seed, **DEMO_MODEL)
    eval_cfg = EvalConfig(model=str(run), data=str(test_dir), out=str(out / "eval"), n=n_test, progress=False)
    print(f"1/4 making {n_train} picture-book scenes for training (seed {seed}) and {n_test} for testing (seed {seed + 1})")
    if not (train_dir / "world.jsonl").exists():
        write_world(train_dir, n=n_train, size=64, seed=seed)
    if not (test_dir / "world.jsonl").exists():
        write_world(test_dir, n=n_test, size=64, seed=seed + 1)

    print(f"2/4 training the {preset} model for {steps:,} steps")
    resume = any((run / stage / STATE).exists() for stage in (RUN_CHECKPOINT, CONCEPT_STAGE))
    train(train_cfg, resume=resume)

    print("\n3/4 describing pictures it has never seen (claims checked against the scene)\n")
    vlm = TinyVLM.from_pretrained(run)
    records = open_records(test_dir).head(6)
    for r, text in zip(records, vlm.describe([r.images[0] for r in records])):
        verdicts = verify(parse_claims(text), r.scene)
        print(f"  {Path(r.images[0]).name}: {text}")
        print(f"      claims: {verdicts.count('true')} true, {verdicts.count('false')} false   "
              f"(truth: {r.extra['short'][0]})\n")

    print("4/4 scoring on the held-out scenes (grounded judge; blind and nearest-neighbour baselines)\n")
    results = evaluate(eval_cfg)
    header, rows = score_rows(results)
    keep = [i for i, h in enumerate(header) if h in SUMMARY]
    print(markdown_table([header[i] for i in keep], [[r[i] for i in keep] for r in rows]))
    print(f"\ndone in {(time.time() - t0) / 60:.1f} min. Loss curve: {run}/loss.png; report: {out}/eval/report.html")
    print(f"try: tinyvlm describe {records[0].images[0]} --model {run}")
    return results
