"""Where a demo training step's time goes: the demo's recipe (tinyvlm/demo.py, DEMO_MODEL) for a
few hundred steps, each stage's wall time split into data (records, tokenising, collating, pixels,
concept targets), forward, backward, optimizer (clip, step, zero_grad), validation, checkpointing
and the rest (the loop's own Python, logging, tqdm); and the rate over each stage's second half, past
the VLM stage's first epoch, in which every picture is still encoded once.

    python -m tinyvlm data world --n 4000 --seed 0 --out /tmp/world-train
    OMP_NUM_THREADS=1 python benchmarks/demo_speed.py --data /tmp/world-train --steps 700

Times are exclusive: a validation's forward passes count as validation, not as forward. The
budget (--steps) is split between the stages as the demo splits it (30% concept), and the
schedule is laid over it, so the figures are the demo's step for step, not its whole length.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

PHASES = ("data", "forward", "backward", "optimizer", "validation", "checkpoint", "other")


class Clock:
    """Exclusive wall time per phase: a timed call inside another is taken out of the outer one."""

    def __init__(self):
        self.spent, self.stack = defaultdict(float), []

    def wrap(self, owner, name: str, phase: str):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            self.stack.append(0.0)
            try:
                return inner(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                children = self.stack.pop()
                self.spent[phase] += dt - children
                if self.stack:
                    self.stack[-1] += dt
        setattr(owner, name, timed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a picture-book world folder (tinyvlm data world --size 64)")
    ap.add_argument("--steps", type=int, default=700, help="steps of both stages together (30%% concept)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the table's figures here")
    ap.add_argument("--out", help="keep the run here (its metrics.jsonl holds the losses), else a temporary folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import tinyvlm.train.loop as loop
    import tinyvlm.train.stages as stages
    from tinyvlm.data.batches import Collator
    from tinyvlm.demo import DEMO_MODEL
    from tinyvlm.train import TrainConfig, train

    clock = Clock()
    for owner, name, phase in [
            (stages.VLMStage, "batch_examples", "data"), (Collator, "__call__", "data"),
            (stages.ConceptStage, "pixels", "data"), (stages, "targets", "data"),
            (stages.VLMStage, "forward", "forward"), (stages.ConceptStage, "forward", "forward"),
            (torch.Tensor, "backward", "backward"),
            (torch.nn.utils, "clip_grad_norm_", "optimizer"), (torch.optim.AdamW, "step", "optimizer"),
            (torch.optim.AdamW, "zero_grad", "optimizer"),
            (stages.VLMStage, "validate", "validation"), (stages.ConceptStage, "validate", "validation"),
            (loop.Stage, "save", "checkpoint")]:
        clock.wrap(owner, name, phase)
    stage_time, stage_steps, ticks = {}, {}, []  # ticks: when each optimizer step ended
    adamw_step = torch.optim.AdamW.step

    def ticking(*a, **kw):
        out = adamw_step(*a, **kw)
        ticks.append(time.perf_counter())
        return out
    torch.optim.AdamW.step = ticking
    run_stage = loop.run_stage

    def timed_stage(stage):
        before = dict(clock.spent)
        ticks.clear()
        t0 = time.perf_counter()
        run_stage(stage)
        half = len(ticks) // 2  # the second half: past the first epoch, where the encoder's outputs are kept
        late = (len(ticks) - 1 - half) / (ticks[-1] - ticks[half])
        key = stage.label or stage.name  # as the progress bar: the VLM stage's name is its checkpoint folder's
        stage_time[key] = (time.perf_counter() - t0, {k: clock.spent[k] - before.get(k, 0.0) for k in clock.spent}, late)
        stage_steps[key] = stage.step
    import tinyvlm.train.run as run
    run.run_stage = timed_stage

    out = Path(args.out or tempfile.mkdtemp(prefix="demo-speed-"))
    try:
        cfg = TrainConfig(data=args.data, out=str(out / "run"), steps=args.steps, seed=0,
                          **{**DEMO_MODEL, "progress": False})
        train(cfg)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(f"# demo recipe, {args.steps} steps, {args.threads} thread(s); seconds per step by phase (share of the stage)\n")
    print("| stage | steps | steps/s | steps/s, 2nd half | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 4) + "|")
    figures = {}
    for name, (wall, spent, late) in stage_time.items():
        n = stage_steps[name]
        spent = {p: spent.get(p, 0.0) for p in PHASES[:-1]}
        spent["other"] = wall - sum(spent.values())
        figures[name] = {"steps": n, "steps_per_s": n / wall, "steps_per_s_2nd_half": late,
                         **{p: spent[p] / n for p in PHASES}}
        print(f"| {name} | {n} | {n / wall:.2f} | {late:.2f} | " +
              " | ".join(f"{1000 * spent[p] / n:.1f} ms ({spent[p] / wall:.0%})" for p in PHASES) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
