"""Training: AdamW, warmup + cosine, clipping, accumulation, validation, bf16 autocast, atomic
checkpoints and exact resume.

Everything random is derived from (seed, epoch, position) or (seed, step), never from state that
lives only in memory, so a run resumed from its last checkpoint sees the same batches and the same
dropout masks as the run that was never interrupted.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .api import TinyVLM, pick_device
from .checkpoint import RUN_CHECKPOINT, atomic_dir, read_json
from .config import get_preset
from .data.batches import TASKS, Collator, Example, record_to_example
from .data.dataset import RecordSource, open_records
from .data.records import Record
from .errors import TinyVLMError
from .model import VisionLanguageModel
from .tokenizer import Tokenizer

STATE, OPTIMIZER, METRICS, LOSS_PNG = "state.json", "optimizer.safetensors", "metrics.jsonl", "loss.png"


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "mini"
    val_data: str | None = None     # default: DATA's val/ split, else 5% of records held out by image
    image_size: int | None = None   # preset overrides, e.g. 64 px for fast CPU runs
    patch_size: int | None = None
    pixel_shuffle: int | None = None
    max_len: int | None = None
    dropout: float | None = None
    vocab_size: int = 4096          # BPE target; the real size is what the training text supports
    steps: int | None = None        # budget in optimizer steps ...
    minutes: float | None = None    # ... or in wall-clock minutes (converted to steps once, then fixed)
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tasks: tuple[str, ...] = TASKS  # for picture-book records: which texts to teach
    augment: bool = False
    image_fit: str = "pad"
    dtype: str = "auto"             # auto | fp32 | bf16
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 200
    progress: bool = True

    # fields that may differ between a run and its resumption
    RUNTIME = ("device", "progress", "log_every")

    def __post_init__(self):
        if (self.steps is None) == (self.minutes is None):
            raise TinyVLMError("give a training budget: --steps N or --minutes M (one of them)")
        if (self.steps is not None and self.steps < 1) or (self.minutes is not None and self.minutes <= 0):
            raise TinyVLMError("the training budget must be positive")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise TinyVLMError(f"unknown dtype '{self.dtype}': use auto, fp32 or bf16")
        self.tasks = tuple(self.tasks)
        bad = set(self.tasks) - set(TASKS)
        if bad or not self.tasks:
            raise TinyVLMError(f"unknown task(s) {sorted(bad)}: choose from {', '.join(TASKS)}")
        get_preset(self.preset)  # unknown preset -> clear error now, not after loading data

    def comparable(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME}


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def held_out(record: Record, fraction: float = 0.05) -> bool:
    """A stable, by-image validation split for data that comes without one."""
    return zlib.crc32(Path(record.images[0]).name.encode()) % 10_000 < fraction * 10_000


def lr_at(step: int, progress: float, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over the first steps, then cosine decay to min_lr_ratio * lr as `progress`
    (the fraction of the budget spent) goes from 0 to 1."""
    warmup = min(cfg.warmup, max(1, total // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Stream:
    """Examples in a fixed order: epoch by epoch through the source, from a saved position."""

    def __init__(self, source: RecordSource, cfg: TrainConfig, epoch: int = 0, pos: int = 0, skip=None):
        self.source, self.cfg, self.epoch, self.pos, self.skip = source, cfg, epoch, pos, skip

    def __iter__(self) -> Iterator[Example]:
        while True:
            whole_epoch, yielded = self.pos == 0, False
            records = itertools.islice(self.source.epoch(self.epoch, self.cfg.seed), self.pos, None)
            for r in records:
                self.pos += 1
                if self.skip and self.skip(r):
                    continue
                yielded = True
                yield record_to_example(r, random.Random(f"{self.cfg.seed}:{self.epoch}:{self.pos}"), self.cfg.tasks)
            if whole_epoch and not yielded:  # every record is held out: fail, don't spin forever
                raise TinyVLMError("no training records left after holding out the validation split")
            self.epoch, self.pos = self.epoch + 1, 0


def training_texts(source: RecordSource) -> Iterator[str]:
    """Every text the model will read or write, for training the tokenizer."""
    for r in source:  # answers are tokenised with a leading space (Tokenizer.encode_answer)
        yield r.prompt + " " + r.text
        yield from r.references or []
        for key in ("short", "long"):
            yield from r.extra.get(key, [])
        for q in r.extra.get("questions", []):
            yield f"{q['question']} {q['answer']}"
    yield from (" Describe the picture.", " Tell a little story about the picture.")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = pick_device(cfg.device)
        self.use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and bf16_supported(self.device))
        self.train_src = open_records(cfg.data, "train")
        self.val_src, self.skip = self._validation_source()
        state_file = self.out / RUN_CHECKPOINT / STATE
        if resume:
            if not state_file.is_file():
                raise TinyVLMError(f"nothing to resume in {self.out}: no checkpoint with training state")
            self._load(state_file)
        else:
            if state_file.is_file():
                raise TinyVLMError(f"{self.out} already holds a training run: pass --resume to continue it, "
                                   "or choose another --out")
            self._fresh()
        self.collate = Collator(self.vlm.tokenizer, self.vlm.cfg, cfg.image_fit)
        self.val_batches = self._val_examples()

    # --- setup ---------------------------------------------------------------------------------
    def _validation_source(self):
        cfg = self.cfg
        if cfg.val_data:
            return open_records(cfg.val_data, "val"), None
        if Path(cfg.data).is_dir() and (Path(cfg.data) / "val").is_dir():
            return open_records(cfg.data, "val"), None
        return self.train_src, held_out  # validate on the held-out images, train on the rest

    def _fresh(self):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        tok = Tokenizer.train(training_texts(self.train_src), cfg.vocab_size)
        mcfg = get_preset(cfg.preset, vit_image_size=cfg.image_size, vit_patch_size=cfg.patch_size,
                          mp_pixel_shuffle=cfg.pixel_shuffle, lm_max_len=cfg.max_len, dropout=cfg.dropout,
                          lm_vocab_size=64 * math.ceil(tok.vocab_size / 64))
        self.vlm = TinyVLM(VisionLanguageModel(mcfg).to(self.device), tok, cfg.image_fit)
        self.opt = self._optimizer()
        self.step, self.epoch, self.pos, self.total_steps, self.elapsed = 0, 0, 0, cfg.steps, 0.0
        self.best_val = float("inf")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / METRICS).write_text("")

    def _load(self, state_file: Path):
        state = read_json(state_file)
        saved, now = state["train_config"], self.cfg.comparable()
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k in now)
        diff = [k for k in diff if not (k == "tasks" and tuple(saved.get(k, ())) == tuple(now[k]))]
        if diff:
            raise TinyVLMError("cannot resume with a different config: " +
                               ", ".join(f"{k} was {saved.get(k)!r}, now {now.get(k)!r}" for k in diff))
        self.vlm = TinyVLM.from_pretrained(state_file.parent, device=str(self.device))
        self.opt = self._optimizer()
        tensors = load_file(state_file.parent / OPTIMIZER)
        opt_state: dict[int, dict] = {}
        for name, t in tensors.items():
            idx, key = name.split(".", 1)
            opt_state.setdefault(int(idx), {})[key] = t.to(self.device) if key != "step" else t
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["optimizer_groups"]})
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        self.total_steps, self.elapsed, self.best_val = state["total_steps"], state["elapsed"], state["best_val"]
        # drop metric lines written after the checkpoint, so the log matches the resumed run
        lines = (self.out / METRICS).read_text().splitlines() if (self.out / METRICS).exists() else []
        kept = [l for l in lines if json.loads(l).get("step", 0) <= self.step]
        (self.out / METRICS).write_text("".join(l + "\n" for l in kept))

    def _optimizer(self) -> torch.optim.AdamW:
        params = [p for p in self.vlm.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]       # matrices and embeddings
        no_decay = [p for p in params if p.dim() < 2]     # biases and LayerNorm gains
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.cfg.lr, betas=(0.9, 0.95), fused=False)

    def _val_examples(self) -> list[list[Example]]:
        rng = random.Random(self.cfg.seed)
        n = self.cfg.eval_batches * self.cfg.batch_size
        recs = list(itertools.islice((r for r in self.val_src if self.skip is None or self.skip(r)), n))
        if not recs:
            return []
        ex = [record_to_example(r, rng, self.cfg.tasks) for r in recs]
        bs = self.cfg.batch_size
        return [ex[i:i + bs] for i in range(0, len(ex), bs)]

    # --- the loop ------------------------------------------------------------------------------
    def loss(self, batch: dict) -> torch.Tensor:
        batch = {k: v.to(self.device) if v is not None else None for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            _, loss = self.vlm.model(batch["input_ids"], batch["images"], batch["labels"])
        return loss

    @torch.no_grad()
    def validate(self) -> float | None:
        if not self.val_batches:
            return None
        self.vlm.model.eval()
        losses = [self.loss(self.collate(b)).item() for b in self.val_batches]
        self.vlm.model.train()
        return sum(losses) / len(losses)

    def _calibrate(self, stream: Iterator[Example]) -> int:
        """Estimate how many steps a minutes budget buys (for warmup and the progress bar): time a
        few forward+backward passes without updating the model."""
        batch = self.collate([next(stream) for _ in range(self.cfg.batch_size)])
        self.vlm.model.train()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.loss(batch).backward()
            times.append(time.perf_counter() - t0)
        self.vlm.model.zero_grad(set_to_none=True)
        per_step = min(times[1:]) * self.cfg.grad_accum * 1.15  # + data loading, eval, saving
        return max(1, int(self.cfg.minutes * 60 / per_step))

    def run(self) -> TinyVLM:
        cfg, model = self.cfg, self.vlm.model
        if self.total_steps is None:
            self.total_steps = self._calibrate(iter(Stream(self.train_src, cfg, skip=self.skip)))
        stream = Stream(self.train_src, cfg, self.epoch, self.pos, self.skip)
        examples = iter(stream)
        model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not cfg.progress, unit="step",
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10)
        window = {"loss": 0.0, "n": 0, "samples": 0, "tokens": 0, "t": time.perf_counter()}
        start, start_elapsed = time.perf_counter(), self.elapsed
        while self.progress() < 1:
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout masks depend on the step only
            lr = lr_at(self.step, self.progress(), self.total_steps, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                micro = [next(examples) for _ in range(cfg.batch_size)]
                aug_rng = random.Random(f"aug:{cfg.seed}:{self.step}") if cfg.augment else None
                batch = self.collate(micro, aug_rng)
                loss = self.loss(batch)
                (loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum
                window["samples"] += len(micro)
                window["tokens"] += batch["input_ids"].numel()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            self.epoch, self.pos = stream.epoch, stream.pos
            self.elapsed = start_elapsed + time.perf_counter() - start
            window["loss"] += step_loss
            window["n"] += 1
            bar.update(1)
            if cfg.minutes and self.step % 50 == 0:  # re-estimate the step count for the progress bar
                bar.total = max(self.step, round(self.step / max(self.progress(), 1e-9)))
            last = self.progress() >= 1
            if self.step % cfg.log_every == 0 or last:
                dt = time.perf_counter() - window["t"]
                row = {"step": self.step, "loss": window["loss"] / window["n"], "lr": lr,
                       "samples_per_s": window["samples"] / dt, "tokens_per_s": window["tokens"] / dt,
                       "elapsed_s": self.elapsed}
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_per_s']:.0f}")
                window = {"loss": 0.0, "n": 0, "samples": 0, "tokens": 0, "t": time.perf_counter()}
            if self.step % cfg.eval_every == 0 or last:
                val = self.validate()
                if val is not None:
                    self._log({"step": self.step, "val_loss": val, "elapsed_s": self.elapsed})
                    self.best_val = min(self.best_val, val)
                    bar.write(f"step {self.step}: val loss {val:.4f}")
            if self.step % cfg.save_every == 0 or last:
                self.save()
        bar.close()
        from .plots import plot_loss
        plot_loss(self.out / METRICS, self.out / LOSS_PNG)
        return self.vlm

    def progress(self) -> float:
        """Fraction of the budget spent: steps for a steps budget, wall-clock time for a minutes
        budget (so the learning rate anneals on time even when the machine is slower or faster
        than calibration measured; such runs are not bit-reproducible across machines)."""
        if self.cfg.minutes:
            return self.elapsed / (self.cfg.minutes * 60)
        return self.step / self.total_steps

    def _log(self, row: dict):
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save(self):
        """Model, tokenizer, optimizer and loop position, swapped in as one directory."""
        with atomic_dir(self.out / RUN_CHECKPOINT) as tmp:
            self.vlm.write_files(tmp)
            opt_state = self.opt.state_dict()
            save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, st in opt_state["state"].items()
                       for k, v in st.items()}, tmp / OPTIMIZER)
            state = {"step": self.step, "epoch": self.epoch, "pos": self.pos, "total_steps": self.total_steps,
                     "elapsed": self.elapsed, "best_val": self.best_val, "train_config": self.cfg.comparable(),
                     "optimizer_groups": opt_state["param_groups"]}
            (tmp / STATE).write_text(json.dumps(state, indent=2))


def train(cfg: TrainConfig, resume: bool = False) -> TinyVLM:
    """Train (or resume) a model; the run directory `cfg.out` ends up holding checkpoint/ (the
    model), metrics.jsonl and loss.png."""
    return Trainer(cfg, resume).run()
