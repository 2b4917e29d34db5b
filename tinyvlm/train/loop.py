"""The one training loop, which every stage runs: seeding per step, warmup + cosine schedule on
steps or on wall-clock minutes, gradient accumulation, clipping, logging to metrics.jsonl,
validation, atomic checkpoints, exact resume and the progress bar.

A stage (stages.py) says only what differs: what a micro-batch is and its loss, the validation
figures, which modules learn, and what else its checkpoint holds.

Everything random is derived from (seed, epoch, position) or (seed, step, micro-batch), never from
state that lives only in memory, so a run resumed from its last checkpoint sees the same batches and
the same dropout masks as the run that was never interrupted.

With several processes (torchrun; distributed.py) the loop runs in each: the model is wrapped in
DistributedDataParallel, each process reads its own share of every step's records (Stream), and
rank 0 alone validates, logs and saves. Process r's micro-batch m of a step is micro-batch
m x processes + r of that step: it holds the records, and draws the dropout and augmentation, that
a single process with grad-accum x processes would give it, so N processes of --batch-size B
train as one process with --batch-size B --grad-accum N (to float rounding).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..checkpoint import atomic_dir
from ..data.dataset import RecordSource
from ..data.records import Record
from ..errors import TinyVLMError
from .config import TrainConfig

if TYPE_CHECKING:
    from .run import Trainer

STATE, OPTIMIZER, METRICS, LOSS_PNG = "state.json", "optimizer.safetensors", "metrics.jsonl", "loss.png"
SKIPPED = "skipped_image"  # the metrics.jsonl key naming a picture that could not be read

Records = Iterator[tuple[Record, random.Random]]


def lr_at(step: int, progress: float, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over the first steps, then cosine decay to min_lr_ratio * lr as `progress`
    (the fraction of the budget spent) goes from 0 to 1."""
    warmup = min(cfg.warmup, max(1, total // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def dropout_seed(seed: int, step: int, micro: int) -> int:
    """The torch seed of a micro-batch's dropout masks: from (seed, step, micro) alone, so resumed
    and many-process runs draw the same masks (micro counts across processes: see the module)."""
    base = seed * 1_000_003 + step  # micro-batch 0 keeps the seed runs have always used
    return base if micro == 0 else random.Random(f"dropout:{seed}:{step}:{micro}").getrandbits(62)


class Stream:
    """Records in a fixed order: epoch by epoch through the source, from a saved position, each with
    a random generator seeded by its place in that order (what it teaches is drawn from it).

    Sharded by rank: with `world` processes, the order is read in rounds of world x batch_size
    records and process `rank` keeps the rank-th batch_size of each round. Every process reads
    (and skips) the same records, so all stand at the same (epoch, pos) after each step, and a
    checkpoint's position means the same to each of them on resume."""

    def __init__(self, source: RecordSource, cfg: TrainConfig, epoch: int = 0, pos: int = 0, skip=None,
                 rank: int = 0, world: int = 1):
        self.source, self.cfg, self.epoch, self.pos, self.skip = source, cfg, epoch, pos, skip
        self.rank, self.world = rank, world

    def __iter__(self) -> Records:
        if self.world == 1:
            yield from self._every()
            return
        n, every = self.cfg.batch_size, self._every()
        while True:
            round_ = list(itertools.islice(every, n * self.world))  # pos is now at the round's end
            yield from round_[self.rank * n:(self.rank + 1) * n]

    def _every(self) -> Records:
        while True:
            whole_epoch, yielded = self.pos == 0, False
            records = itertools.islice(self.source.epoch(self.epoch, self.cfg.seed), self.pos, None)
            for r in records:
                self.pos += 1
                if self.skip and self.skip(r):
                    continue
                yielded = True
                yield r, random.Random(f"{self.cfg.seed}:{self.epoch}:{self.pos}")
            if whole_epoch and not yielded:  # every record is held out: fail, don't spin forever
                raise TinyVLMError("no training records left after holding out the validation split "
                                   "and skipping those this stage cannot use")
            self.epoch, self.pos = self.epoch + 1, 0


class Stage:
    """What the loop needs from a stage. A subclass sets `name` (its folder in the run directory),
    `tag` (marks its rows in metrics.jsonl), `loss_key`, `earlier` (the stages that run before it),
    and in __init__ `module` (what learns and is clipped) and `opt`; and it implements `forward`,
    `validate`, `write_weights`, and where it has them `extra_state`, `skips`, `estimate_steps`,
    `validated` and `train_mode`."""
    name: str
    label = ""  # on the progress bar (default: name)
    tag: dict = {}
    loss_key = "loss"
    earlier: tuple[str, ...] = ()
    module: torch.nn.Module
    net: torch.nn.Module  # what training steps call: `module`, in DistributedDataParallel with several processes
    opt: torch.optim.Optimizer

    def __init__(self, trainer: "Trainer", steps: int | None, minutes: float | None):
        self.trainer, self.cfg, self.dir = trainer, trainer.cfg, trainer.out / self.name
        self.steps, self.minutes, self.total_steps = steps, minutes, steps
        self.step, self.epoch, self.pos, self.elapsed = 0, 0, 0, 0.0

    # --- what each stage computes --------------------------------------------------------------
    def forward(self, records: Records, micro: int) -> tuple[torch.Tensor, dict[str, int]]:
        """The loss of the next micro-batch drawn from `records`, computed through `self.net`
        (`micro` counts the micro-batches of this step, across processes), and what it held, e.g.
        {"samples": n}, for the per-second rates."""
        raise NotImplementedError

    def validate(self) -> dict | None:
        """Held-out figures for the log, or None where there is nothing to validate on."""
        raise NotImplementedError

    def validated(self, figures: dict, last: bool, bar: tqdm):
        """Bookkeeping and a message after validation."""

    def write_weights(self, folder: Path):
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {}

    def skips(self, record: Record) -> bool:
        """Records this stage does not learn from: the held-out validation pictures, and records
        whose pictures cannot be read."""
        return (self.trainer.skip is not None and self.trainer.skip(record)) or not self.readable(record)

    def readable(self, record: Record) -> bool:
        """False for a record with a picture that cannot be read; the first time a run meets that
        picture, it says so on stderr and in metrics.jsonl (a resumed run remembers)."""
        broken = self.trainer.unreadable(record)
        if broken is None:
            return True
        path, why = broken
        if path not in self.trainer.reported and self.trainer.dist.is_main:
            self.trainer.reported.add(path)
            tqdm.write(f"tinyvlm: skipping the records of a picture that cannot be read: {why}", file=sys.stderr)
            self.log(step=self.step, **{SKIPPED: path}, reason=why)
        return False

    def estimate_steps(self, records: Records) -> int | None:
        """How many steps a minutes budget buys, or None to warm up over cfg.warmup steps."""
        return None

    def train_mode(self):
        self.module.train()

    # --- shared by every stage -----------------------------------------------------------------
    def run(self):
        run_stage(self)

    @property
    def horizon(self) -> int:
        """The step count the schedule is laid over (a minutes budget of unknown step count warms
        up over cfg.warmup steps)."""
        return self.total_steps or 10 * self.cfg.warmup

    def progress(self) -> float:
        """Fraction of the budget spent: steps for a steps budget, wall-clock time for a minutes
        budget (so the learning rate anneals on time even when the machine is slower or faster
        than calibration measured; such runs are not bit-reproducible across machines)."""
        if self.minutes:
            return self.elapsed / (self.minutes * 60)
        return self.step / self.total_steps

    def stream(self, epoch: int = 0, pos: int = 0) -> Stream:
        dist = self.trainer.dist
        return Stream(self.trainer.train_src, self.cfg, epoch, pos, self.skips, dist.rank, dist.world)

    def log(self, **row):
        self.trainer._log({**self.tag, **row})

    def keeps(self, row: dict) -> bool:
        """Which metric rows a resume keeps: earlier stages', and this stage's up to its checkpoint."""
        return row.get("stage") in self.earlier or (row.get("stage") == self.tag.get("stage")
                                                     and row.get("step", 0) <= self.step)

    def restore(self, state: dict):
        """Continue from the checkpoint in self.dir (its weights are already loaded)."""
        load_optimizer(self.opt, self.dir / OPTIMIZER, state["optimizer_groups"], self.trainer.device)
        self.step, self.epoch, self.pos, self.elapsed = state["step"], state["epoch"], state["pos"], state["elapsed"]
        self.total_steps = state.get("total_steps", self.total_steps)
        self.trainer._trim_metrics(self.keeps)

    def save(self):
        """Weights, optimizer and loop position, swapped in as one directory."""
        with atomic_dir(self.dir) as tmp:
            self.write_weights(tmp)
            groups = save_optimizer(self.opt, tmp / OPTIMIZER)["param_groups"]
            state = {"step": self.step, "epoch": self.epoch, "pos": self.pos, "total_steps": self.total_steps,
                     "elapsed": self.elapsed, **self.extra_state(), "train_config": self.cfg.comparable(),
                     "world_size": self.trainer.dist.world,
                     "optimizer_groups": groups}
            (tmp / STATE).write_text(json.dumps(state, indent=2))


def run_stage(stage: Stage):
    """Train `stage` until its budget is spent, from wherever its checkpoint left it."""
    cfg, dist = stage.cfg, stage.trainer.dist
    if stage.total_steps is None:  # rank 0 times the steps; every process takes its count
        estimate = stage.estimate_steps(iter(stage.stream())) if dist.is_main else 0
        agreed = dist.broadcast_float(-1 if estimate is None else estimate)  # None: no estimate
        stage.total_steps = None if agreed < 0 else round(agreed)
    stream = stage.stream(stage.epoch, stage.pos)
    records = iter(stream)
    stage.train_mode()
    stage.net = dist.wrap(stage.module)
    bar = tqdm(total=stage.total_steps, initial=stage.step, disable=not (cfg.progress and dist.is_main), unit="step",
               desc=stage.label or stage.name, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10)
    window: dict = {"loss": 0.0, "n": 0, "t": time.perf_counter()}
    start, start_elapsed = time.perf_counter(), stage.elapsed
    while stage.progress() < 1:
        lr = lr_at(stage.step, stage.progress(), stage.horizon, cfg)
        for g in stage.opt.param_groups:
            g["lr"] = lr
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            k = micro * dist.world + dist.rank  # this micro-batch's place among all processes' (module doc)
            torch.manual_seed(dropout_seed(cfg.seed, stage.step, k))  # not on anything a resume loses
            last_micro = micro == cfg.grad_accum - 1
            with stage.net.no_sync() if stage.net is not stage.module and not last_micro else contextlib.nullcontext():
                loss, counts = stage.forward(records, k)  # gradients are averaged over processes on the last
                (loss / cfg.grad_accum).backward()
            step_loss += loss.item() / cfg.grad_accum
            for key, n in counts.items():
                window[key] = window.get(key, 0) + n
        torch.nn.utils.clip_grad_norm_(stage.module.parameters(), cfg.grad_clip)
        stage.opt.step()
        stage.opt.zero_grad(set_to_none=True)
        stage.step += 1
        stage.epoch, stage.pos = stream.epoch, stream.pos
        elapsed = start_elapsed + time.perf_counter() - start
        stage.elapsed = dist.broadcast_float(elapsed) if stage.minutes else elapsed  # one clock ends every process's run
        window["loss"] += step_loss
        window["n"] += 1
        bar.update(1)
        if stage.minutes and stage.step % 50 == 0:  # re-estimate the step count for the progress bar
            bar.total = max(stage.step, round(stage.step / max(stage.progress(), 1e-9)))
        last = stage.progress() >= 1
        if stage.step % cfg.log_every == 0 or last:
            dt = time.perf_counter() - window.pop("t")
            n = window.pop("n")
            keys = list(window)  # "loss", then what forward counted, in the same order in every process
            totals = dict(zip(keys, dist.sum_floats([window[key] for key in keys])))
            loss = totals.pop("loss") / dist.world  # the mean over processes, as one process would log it
            rates = {f"{key}_per_s": v / dt for key, v in totals.items()}
            if dist.is_main:
                stage.log(step=stage.step, **{stage.loss_key: loss / n}, lr=lr, **rates, elapsed_s=stage.elapsed)
            bar.set_postfix({"loss": f"{loss / n:.3f}",
                             **{key.replace("_per", ""): f"{v:.0f}" for key, v in itertools.islice(rates.items(), 1)}})
            window = {"loss": 0.0, "n": 0, "t": time.perf_counter()}
        if dist.is_main and (stage.step % cfg.eval_every == 0 or last):
            figures = stage.validate()
            if figures is not None:
                stage.log(step=stage.step, **figures, elapsed_s=stage.elapsed)
                stage.validated(figures, last, bar)
        if dist.is_main and (stage.step % cfg.save_every == 0 or last):
            stage.save()
    stage.net = stage.module
    bar.close()


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict:
    """Optimizer tensors as safetensors ("<param index>.<key>"); returns the state dict, whose
    param_groups the caller keeps as JSON."""
    state = opt.state_dict()
    save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, st in state["state"].items()
               for k, v in st.items()}, path)
    return state


def load_optimizer(opt: torch.optim.Optimizer, path: Path, groups: list, device: torch.device):
    tensors = load_file(path)
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t.to(device) if key != "step" else t
    opt.load_state_dict({"state": state, "param_groups": groups})


def optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over what requires a gradient, decaying matrices and embeddings only."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]       # matrices and embeddings
    no_decay = [p for p in params if p.dim() < 2]     # biases and LayerNorm gains
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), fused=False)
