"""Training: AdamW, warmup + cosine, clipping, accumulation, validation, bf16 autocast, atomic
checkpoints and exact resume; optionally a first stage that teaches the image encoder the data's
concepts (concepts.py) before the whole model learns to write.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .api import TinyVLM, pick_device
from .checkpoint import RUN_CHECKPOINT, atomic_dir, cpu_state, read_json
from .concepts import ConceptHead, build_vocab, concept_f1, concept_loss, targets, usable
from .config import VLMConfig, get_preset
from .data.batches import TASKS, Collator, Example, record_to_example
from .data.dataset import RecordSource, held_out, open_records
from .data.images import to_tensor
from .data.records import Record
from .errors import TinyVLMError
from .model import VisionLanguageModel
from .tokenizer import Tokenizer

STATE, OPTIMIZER, METRICS, LOSS_PNG = "state.json", "optimizer.safetensors", "metrics.jsonl", "loss.png"
CONCEPT_STAGE, CONCEPT_WEIGHTS = "concepts", "encoder_and_head.safetensors"  # RUN/concepts/: the first stage


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "mini"
    val_data: str | None = None     # default: DATA's val/ split, else 5% of records held out by image
    image_size: int | None = None   # preset overrides, e.g. 64 px for fast CPU runs
    patch_size: int | None = None
    stem: str | None = None         # the encoder's patch embedding: patch (preset default) or conv
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
    concept_pretrain: float = 0.0   # share of the budget first spent teaching the encoder concepts
    freeze_encoder: bool = False    # then keep that encoder fixed while the VLM learns to read it
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
        if not 0 <= self.concept_pretrain < 1:
            raise TinyVLMError(f"concept_pretrain is a share of the budget, 0 <= share < 1; got {self.concept_pretrain}")
        if self.freeze_encoder and not self.concept_pretrain:
            raise TinyVLMError("freeze_encoder keeps the encoder as the concept stage left it, so it needs "
                               "concept_pretrain > 0 (a from-scratch encoder would stay random)")
        if self.steps is not None and self.concept_pretrain:
            n = round(self.concept_pretrain * self.steps)
            if not 1 <= n < self.steps:
                raise TinyVLMError(f"concept_pretrain {self.concept_pretrain} of {self.steps} steps gives {n} to the concept "
                                   "stage: each stage needs at least one step")
        self.model_config()  # an unknown preset or a geometry that does not fit -> a clear error now, not after loading data

    def model_config(self, **more) -> VLMConfig:
        """The preset with this run's model overrides (and `more`, e.g. the tokenizer's vocabulary size)."""
        return get_preset(self.preset, vit_image_size=self.image_size, vit_patch_size=self.patch_size,
                          vit_stem=self.stem, mp_pixel_shuffle=self.pixel_shuffle, lm_max_len=self.max_len,
                          dropout=self.dropout, **more)

    def comparable(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME}

    def check_resumable(self, saved: dict):
        """Refuse to resume a run saved with a different config (fields added since count as their
        default)."""
        defaults, now = {f.name: f.default for f in fields(self)}, self.comparable()
        diff = [k for k in sorted(now) if saved.get(k, defaults.get(k)) != now[k]
                and not (k == "tasks" and tuple(saved.get(k, ())) == now[k])]
        if diff:
            raise TinyVLMError("cannot resume with a different config: " +
                               ", ".join(f"{k} was {saved.get(k, defaults.get(k))!r}, now {now[k]!r}" for k in diff))


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


def lr_at(step: int, progress: float, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over the first steps, then cosine decay to min_lr_ratio * lr as `progress`
    (the fraction of the budget spent) goes from 0 to 1."""
    warmup = min(cfg.warmup, max(1, total // 10))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Stream:
    """Records in a fixed order: epoch by epoch through the source, from a saved position, each with
    a random generator seeded by its place in that order (what it teaches is drawn from it)."""

    def __init__(self, source: RecordSource, cfg: TrainConfig, epoch: int = 0, pos: int = 0, skip=None):
        self.source, self.cfg, self.epoch, self.pos, self.skip = source, cfg, epoch, pos, skip

    def __iter__(self) -> Iterator[tuple[Record, random.Random]]:
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
        # the budget, split between the concept stage and the VLM
        share = cfg.concept_pretrain
        self.concept_steps = round(share * cfg.steps) if cfg.steps else None
        self.vlm_steps = cfg.steps - self.concept_steps if cfg.steps else None
        self.concept_minutes = share * cfg.minutes if cfg.minutes else None
        self.vlm_minutes = (1 - share) * cfg.minutes if cfg.minutes else None
        state_file, concept_state = self.out / RUN_CHECKPOINT / STATE, self.out / CONCEPT_STAGE / STATE
        if resume:
            if state_file.is_file():
                self._load(state_file)
            elif concept_state.is_file():  # stopped in the concept stage: the VLM starts as it would have
                cfg.check_resumable(read_json(concept_state)["train_config"])
                self._fresh(keep_metrics=True)
            else:
                raise TinyVLMError(f"nothing to resume in {self.out}: no checkpoint with training state")
        else:
            if state_file.is_file() or concept_state.is_file():
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

    def training_records(self) -> Iterator[Record]:
        return (r for r in self.train_src if not (self.skip and self.skip(r)))

    def validation_records(self) -> Iterator[Record]:
        return (r for r in self.val_src if self.skip is None or self.skip(r))

    def _fresh(self, keep_metrics: bool = False):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        tok = Tokenizer.train(training_texts(self.train_src), cfg.vocab_size)
        mcfg = cfg.model_config(lm_vocab_size=64 * math.ceil(tok.vocab_size / 64))
        self.vlm = TinyVLM(VisionLanguageModel(mcfg).to(self.device), tok, cfg.image_fit)
        self.opt = self._optimizer(self.vlm.model)
        self.step, self.epoch, self.pos, self.total_steps, self.elapsed = 0, 0, 0, self.vlm_steps, 0.0
        self.best_val = float("inf")
        self.out.mkdir(parents=True, exist_ok=True)
        if not keep_metrics:
            (self.out / METRICS).write_text("")

    def _load(self, state_file: Path):
        state = read_json(state_file)
        self.cfg.check_resumable(state["train_config"])
        self.vlm = TinyVLM.from_pretrained(state_file.parent, device=str(self.device))
        self.opt = self._optimizer(self.vlm.model)
        load_optimizer(self.opt, state_file.parent / OPTIMIZER, state["optimizer_groups"], self.device)
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        self.total_steps, self.elapsed, self.best_val = state["total_steps"], state["elapsed"], state["best_val"]
        self._trim_metrics(lambda row: row.get("stage") == CONCEPT_STAGE or row.get("step", 0) <= self.step)

    def _trim_metrics(self, keep):
        """Drop metric lines written after the checkpoint, so the log matches the resumed run."""
        lines = (self.out / METRICS).read_text().splitlines() if (self.out / METRICS).exists() else []
        (self.out / METRICS).write_text("".join(l + "\n" for l in lines if keep(json.loads(l))))

    def _optimizer(self, module: torch.nn.Module) -> torch.optim.AdamW:
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]       # matrices and embeddings
        no_decay = [p for p in params if p.dim() < 2]     # biases and LayerNorm gains
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.cfg.lr, betas=(0.9, 0.95), fused=False)

    def _val_examples(self) -> list[list[Example]]:
        rng = random.Random(self.cfg.seed)
        n = self.cfg.eval_batches * self.cfg.batch_size
        recs = list(itertools.islice(self.validation_records(), n))
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
        self.train_mode()
        return sum(losses) / len(losses)

    def train_mode(self):
        """The VLM stage's train mode. With freeze_encoder the encoder is left out of the gradient
        and kept in eval mode, so its batch-norm statistics stay as the concept stage left them."""
        self.vlm.model.train()
        if self.cfg.freeze_encoder:
            self.vlm.model.vision.eval().requires_grad_(False)

    def batch_examples(self, records: Iterator[tuple[Record, random.Random]], step: int) -> list[Example]:
        """A micro-batch of examples, all of this step's task where the records have it. Why one
        task a step: a long story beside short answers pads every sequence to the story's length,
        and mixed picture-book batches were half padding (one task a step trains 1.7x more samples
        a minute: docs/training.md)."""
        task = self.cfg.tasks[step % len(self.cfg.tasks)]
        return [record_to_example(r, rng, self.cfg.tasks, prefer=task)
                for r, rng in itertools.islice(records, self.cfg.batch_size)]

    def _calibrate(self, records: Iterator[tuple[Record, random.Random]]) -> int:
        """Estimate how many steps a minutes budget buys (for warmup and the progress bar): time
        forward+backward passes, one batch per task, without updating the model."""
        batches = [self.collate(self.batch_examples(records, step)) for step in range(len(self.cfg.tasks))]
        self.train_mode()
        times = []
        for batch in [batches[0], *batches]:  # the first pass only warms up
            t0 = time.perf_counter()
            self.loss(batch).backward()
            times.append(time.perf_counter() - t0)
        self.vlm.model.zero_grad(set_to_none=True)
        per_step = sum(times[1:]) / len(batches) * self.cfg.grad_accum * 1.15  # + data loading, eval, saving
        return max(1, int(self.vlm_minutes * 60 / per_step))

    def run(self) -> TinyVLM:
        cfg, model = self.cfg, self.vlm.model
        if cfg.concept_pretrain and self.step == 0:
            stage = ConceptStage(self)
            stage.run()
            if cfg.freeze_encoder:  # the head reads this encoder as it will stay: keep it, for grounded decoding
                self.vlm.concepts, self.vlm.concept_head = stage.vocab, stage.head.eval().requires_grad_(False)
        if self.total_steps is None:
            self.total_steps = self._calibrate(iter(Stream(self.train_src, cfg, skip=self.skip)))
        stream = Stream(self.train_src, cfg, self.epoch, self.pos, self.skip)
        records = iter(stream)
        self.train_mode()
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
                micro = self.batch_examples(records, self.step)
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
            if self.vlm_minutes and self.step % 50 == 0:  # re-estimate the step count for the progress bar
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
        if self.vlm_minutes:
            return self.elapsed / (self.vlm_minutes * 60)
        return self.step / self.total_steps

    def _log(self, row: dict):
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save(self):
        """Model, tokenizer, optimizer and loop position, swapped in as one directory."""
        with atomic_dir(self.out / RUN_CHECKPOINT) as tmp:
            self.vlm.write_files(tmp)
            opt_state = save_optimizer(self.opt, tmp / OPTIMIZER)
            state = {"step": self.step, "epoch": self.epoch, "pos": self.pos, "total_steps": self.total_steps,
                     "elapsed": self.elapsed, "best_val": self.best_val, "train_config": self.cfg.comparable(),
                     "optimizer_groups": opt_state["param_groups"]}
            (tmp / STATE).write_text(json.dumps(state, indent=2))


class ConceptStage:
    """The first stage: the image encoder, with a throwaway ConceptHead, learns which concepts
    each picture holds (concepts.py), in place inside the VLM the Trainer will go on to train.
    It has its own budget share, learning-rate schedule, checkpoint (RUN/concepts/) and exact
    resume, built from the same parts as the VLM stage."""

    def __init__(self, trainer: Trainer):
        self.t, cfg = trainer, trainer.cfg
        self.dir, self.encoder = trainer.out / CONCEPT_STAGE, trainer.vlm.model.vision
        self.grid = trainer.vlm.cfg.vit_image_size // trainer.vlm.cfg.vit_patch_size
        state_file = self.dir / STATE
        if state_file.is_file():
            state = read_json(state_file)
            self.vocab = state["concepts"]
            self._build()
            weights = load_file(self.dir / CONCEPT_WEIGHTS, device=str(trainer.device))
            self.both.load_state_dict(weights)
            load_optimizer(self.opt, self.dir / OPTIMIZER, state["optimizer_groups"], trainer.device)
            self.step, self.epoch, self.pos, self.elapsed = state["step"], state["epoch"], state["pos"], state["elapsed"]
            trainer._trim_metrics(lambda row: row.get("stage") == CONCEPT_STAGE and row["step"] <= self.step)
        else:
            self.vocab = build_vocab(trainer.training_records())
            torch.manual_seed(cfg.seed)
            self._build()
            self.step, self.epoch, self.pos, self.elapsed = 0, 0, 0, 0.0
        self.index = {c: i for i, c in enumerate(self.vocab)}
        n = cfg.eval_batches * cfg.batch_size
        self.val = list(itertools.islice(filter(usable, trainer.validation_records()), n))

    def _build(self):
        t = self.t
        self.head = ConceptHead(t.vlm.cfg.vit_width, len(self.vocab)).to(t.device)
        self.both = torch.nn.ModuleDict({"encoder": self.encoder, "head": self.head})
        self.opt = t._optimizer(self.both)

    def progress(self) -> float:
        t = self.t
        return self.elapsed / (t.concept_minutes * 60) if t.concept_minutes else self.step / t.concept_steps

    def pixels(self, records: list[Record]) -> torch.Tensor:
        return torch.stack([to_tensor(self.t.collate.images.get(r.images[0])) for r in records]).to(self.t.device)

    def scores(self, records: list[Record]) -> torch.Tensor:
        with torch.autocast(self.t.device.type, dtype=torch.bfloat16, enabled=self.t.use_bf16):
            return self.head(self.encoder(self.pixels(records)))

    @torch.no_grad()
    def validate(self) -> dict:
        """Held-out concept loss and F1 (is each concept in the picture?), for the log."""
        self.both.eval()
        loss, tp, pred, true, bs = 0.0, 0, 0, 0, self.t.cfg.batch_size
        for i in range(0, len(self.val), bs):
            recs = self.val[i:i + bs]
            s, tgt = self.scores(recs), [targets(r, self.index, self.grid) for r in recs]
            loss += concept_loss(s, tgt).item() * len(recs)
            a, b, c = concept_f1(s, tgt)
            tp, pred, true = tp + a, pred + b, true + c
        self.both.train()
        return {"val_concept_loss": loss / len(self.val), "val_concept_f1": 2 * tp / max(1, pred + true)}

    def run(self):
        t, cfg = self.t, self.t.cfg
        skip = (lambda r: not usable(r) or (t.skip is not None and t.skip(r)))
        stream = Stream(t.train_src, cfg, self.epoch, self.pos, skip)
        records = (r for r, _ in stream)
        horizon = t.concept_steps or 10 * cfg.warmup  # a minutes budget: warm up for cfg.warmup steps
        self.both.train()
        window, start, start_elapsed = [0.0, 0, time.perf_counter()], time.perf_counter(), self.elapsed
        while self.progress() < 1:
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)
            lr = lr_at(self.step, self.progress(), horizon, cfg)
            for g in self.opt.param_groups:
                g["lr"] = lr
            batch = [next(records) for _ in range(cfg.batch_size)]
            loss = concept_loss(self.scores(batch), [targets(r, self.index, self.grid) for r in batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.both.parameters(), cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            self.epoch, self.pos = stream.epoch, stream.pos
            self.elapsed = start_elapsed + time.perf_counter() - start
            window[0], window[1] = window[0] + loss.item(), window[1] + 1
            last = self.progress() >= 1
            if self.step % cfg.log_every == 0 or last:
                dt = time.perf_counter() - window[2]
                t._log({"stage": CONCEPT_STAGE, "step": self.step, "concept_loss": window[0] / window[1], "lr": lr,
                        "images_per_s": window[1] * cfg.batch_size / dt, "elapsed_s": self.elapsed})
                window = [0.0, 0, time.perf_counter()]
            if self.val and (self.step % cfg.eval_every == 0 or last):
                val = self.validate()
                t._log({"stage": CONCEPT_STAGE, "step": self.step, **val, "elapsed_s": self.elapsed})
                if last and cfg.progress:
                    print(f"concept stage: {self.step} steps, {len(self.vocab)} concepts, held-out concept F1 "
                          f"{val['val_concept_f1']:.2f}", file=sys.stderr)
            if self.step % cfg.save_every == 0 or last:
                self.save()

    def save(self):
        with atomic_dir(self.dir) as tmp:
            save_file(cpu_state(self.both), tmp / CONCEPT_WEIGHTS)
            groups = save_optimizer(self.opt, tmp / OPTIMIZER)["param_groups"]
            state = {"step": self.step, "epoch": self.epoch, "pos": self.pos, "elapsed": self.elapsed,
                     "concepts": self.vocab, "train_config": self.t.cfg.comparable(), "optimizer_groups": groups}
            (tmp / STATE).write_text(json.dumps(state, indent=2))


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


def train(cfg: TrainConfig, resume: bool = False) -> TinyVLM:
    """Train (or resume) a model; the run directory `cfg.out` ends up holding checkpoint/ (the
    model), metrics.jsonl and loss.png."""
    return Trainer(cfg, resume).run()
