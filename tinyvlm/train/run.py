"""A training run: its data, its model, its folder and its log; the stages take turns in it.

    RUN/mae/, RUN/siglip/, RUN/concepts/
                      the encoder pretraining stages' checkpoints (with --mae, --siglip, --concept-pretrain)
    RUN/checkpoint/   the model, with optimizer.safetensors and state.json for resuming
    RUN/metrics.jsonl one row per --log-every steps and per validation
    RUN/loss.png
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from ..api import TinyVLM, pick_device
from ..checkpoint import RUN_CHECKPOINT, read_json
from ..data.batches import ICL_TASK, TASKS, Collator, learned_tasks
from ..data.dataset import RecordSource, held_out, open_records
from ..data.records import Record
from ..errors import TinyVLMError
from ..model import VisionLanguageModel
from ..tokenizer import Tokenizer
from .config import PRETRAIN_SHARES, TrainConfig, precision
from .distributed import Dist, process_group, this_device
from .loop import LOSS_PNG, METRICS, SKIPPED, STATE, run_stage
from .stages import PRETRAIN_STAGES, VLMStage


def training_texts(source: RecordSource) -> Iterator[str]:
    """Every text the model will read or write, for training the tokenizer."""
    for r in source:  # text is tokenised with a leading space (Tokenizer.encode_text)
        if r.turns:
            yield from (text for _, text in r.turns)
        else:
            yield r.prompt + " " + r.text
        yield from r.references or []
        for key in ("short", "long"):
            yield from r.extra.get(key, [])
        for q in r.extra.get("questions", []):
            yield f"{q['question']} {q['answer']}"
    yield from (" Describe the picture.", " Tell a little story about the picture.")


class Trainer:
    """Opens the data, builds (or reloads) the model and the run folder, then runs the stages."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, dist: Dist | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = dist or Dist()
        self.device = this_device(pick_device(cfg.device), self.dist)
        self.use_bf16, self.precision = precision(cfg, self.device)
        self.train_src = open_records(cfg.data, "train")
        self.icl_src = open_records(cfg.icl_data, "train") if cfg.icl_data else None
        self.val_src, self.skip = self._validation_source()
        vlm_state = self.out / RUN_CHECKPOINT / STATE
        stage_states = [self.out / name / STATE for name in PRETRAIN_STAGES if (self.out / name / STATE).is_file()]
        if resume:
            if vlm_state.is_file():
                self._check_resumable(read_json(vlm_state))
                self.vlm = TinyVLM.from_pretrained(vlm_state.parent, device=str(self.device))
            elif stage_states:  # stopped in encoder pretraining: the VLM starts as it would have
                self._check_resumable(read_json(stage_states[-1]))
                self._fresh(keep_metrics=True)
            else:
                raise TinyVLMError(f"nothing to resume in {self.out}: no checkpoint with training state")
        else:
            if vlm_state.is_file() or stage_states:
                raise TinyVLMError(f"{self.out} already holds a training run: pass --resume to continue it, "
                                   "or choose another --out")
            self._fresh()
        self.vlm.training = cfg.comparable()  # saved beside the weights (training.json), for the model card
        self.collate = Collator(self.vlm.tokenizer, self.vlm.cfg, cfg.image_fit)
        self.broken: dict[str, str] = {}  # picture -> why it cannot be read (each decoded once more at most)
        self.read: set[str] = set()  # the pictures read once already: every epoch asks again, and they are fine
        self.reported: set[str] = set()   # the broken pictures metrics.jsonl already names

    # --- setup ---------------------------------------------------------------------------------
    def _check_resumable(self, state: dict):
        """The same config, and the same number of processes: another count would change the
        global batch (batch_size x processes x grad_accum) in the middle of the run."""
        self.cfg.check_resumable(state["train_config"])
        saved = state.get("world_size", 1)
        if saved != self.dist.world:
            raise TinyVLMError(f"cannot resume with a different number of processes: the run was trained by {saved}, "
                               f"now {self.dist.world} (torchrun --nproc_per_node x --nnodes must give {saved})")

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
        if cfg.init:
            self.vlm = self._init_from(cfg.init)
        else:
            tok = None
            if self.dist.is_main:  # built once, by rank 0, then shared
                texts = itertools.chain(training_texts(self.train_src), training_texts(self.icl_src) if self.icl_src else ())
                tok = Tokenizer.train(texts, cfg.vocab_size)
            if self.dist.enabled:
                tok = Tokenizer.from_str(self.dist.broadcast_object(tok.to_str() if tok else None))
            mcfg = cfg.model_config(lm_vocab_size=64 * math.ceil(tok.vocab_size / 64))
            self.vlm = TinyVLM(VisionLanguageModel(mcfg).to(self.device), tok, cfg.image_fit)
        taught = learned_tasks(self.train_src, cfg.text_tasks() or TASKS) if self.dist.is_main else None
        taught = self.dist.broadcast_object(taught)
        self.vlm.tasks = taught + (ICL_TASK,) if self.icl_src is not None else taught
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not keep_metrics:
                (self.out / METRICS).write_text("")

    def _init_from(self, path: str) -> TinyVLM:
        """A trained model to fine-tune: its weights, tokenizer and concept head; the run may give it
        a longer context (rotary positions have no weights), a new dropout, and another picture size
        (the encoder's learned positions are resized to the new patch grid: VisionLanguageModel.reconfigured).
        The encoder's other geometry (patch size, stem, connector) is in its weights: a run that
        asks for another one is refused in one line. The concept head is kept only with
        --freeze-encoder at the same size: it reads the encoder as it stays (docs/training.md)."""
        vlm = TinyVLM.from_pretrained(path, device=str(self.device))
        resized = self.cfg.image_size not in (None, vlm.cfg.vit_image_size)
        fixed = {name: getattr(vlm.cfg, TrainConfig.OVERRIDES.get(name, "vit_" + name))
                 for name in ("patch_size", "stem", "pixel_shuffle", "summary_tokens")}
        for name, theirs in fixed.items():
            if getattr(self.cfg, name) is not None and getattr(self.cfg, name) != theirs:
                raise TinyVLMError(f"--init {path} has {name.replace('_', '-')} {theirs}, which its weights fix: "
                                   f"drop --{name.replace('_', '-')} {getattr(self.cfg, name)} (only --image-size, "
                                   "--max-len and --dropout may change)")
        changes = {k: v for k, v in (("lm_max_len", self.cfg.max_len), ("dropout", self.cfg.dropout),
                                     ("vit_image_size", self.cfg.image_size)) if v is not None}
        if changes:
            try:
                cfg = replace(vlm.cfg, **changes)
            except TinyVLMError as e:
                raise TinyVLMError(f"--init {path} cannot change as asked: {e}") from None
            vlm.model = vlm.model.reconfigured(cfg)
            vlm.cfg = vlm.model.cfg
        # the encoder will change under its concept head (training, or positions resized): the head would
        # mislead (docs/training.md: a 64-px head read at 128 px, concept F1 0.61 -> 0.49)
        if not self.cfg.freeze_encoder or resized:
            vlm.concepts, vlm.concept_head, vlm.concept_plugin = None, None, None
        return vlm

    def unreadable(self, record: Record) -> tuple[str, str] | None:
        """(picture, why) for the first of the record's pictures that cannot be read, else None.
        Reading goes through the collator's cache, so a good picture is decoded once as before."""
        for path in record.images:
            if path in self.read:
                continue
            if path not in self.broken:
                try:
                    self.collate.images.get(path)
                    self.read.add(path)
                    continue
                except (TinyVLMError, Image.DecompressionBombError) as e:
                    self.broken[path] = str(e)
            return path, self.broken[path]
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # --- the log -------------------------------------------------------------------------------
    def _log(self, row: dict):
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _trim_metrics(self, keep):
        """Drop metric lines written after the checkpoint, so the log matches the resumed run."""
        lines = (self.out / METRICS).read_text().splitlines() if (self.out / METRICS).exists() else []
        rows = [json.loads(l) for l in lines]
        if self.dist.is_main:
            (self.out / METRICS).write_text("".join(l + "\n" for l, row in zip(lines, rows) if keep(row)))
        self.reported = {row[SKIPPED] for row in rows if SKIPPED in row and keep(row)}

    # --- the stages ----------------------------------------------------------------------------
    def run(self) -> TinyVLM:
        cfg = self.cfg
        if self.dist.is_main:
            print(self.precision + (f", {self.dist.world} processes" if self.dist.enabled else ""), file=sys.stderr)
        if not (self.out / RUN_CHECKPOINT / STATE).is_file():  # encoder pretraining, each stage it is given
            for name, share in PRETRAIN_SHARES.items():  # a finished stage reloads its encoder and moves on
                if getattr(cfg, share):
                    stage = PRETRAIN_STAGES[name](self)
                    run_stage(stage)
            if cfg.freeze_encoder and cfg.concept_pretrain:  # the head reads this encoder as it will stay: keep it
                self.vlm.concepts, self.vlm.concept_head = stage.vocab, stage.head.eval().requires_grad_(False)
        run_stage(VLMStage(self))
        if self.dist.is_main:
            from ..plots import plot_loss
            plot_loss(self.out / METRICS, self.out / LOSS_PNG)
        self.dist.barrier()  # no process reports the run done before rank 0 has written it
        return self.vlm


def train(cfg: TrainConfig, resume: bool = False) -> TinyVLM:
    """Train (or resume) a model; the run directory `cfg.out` ends up holding checkpoint/ (the
    model), metrics.jsonl and loss.png. Started by torchrun, each process calls this and they
    train one model together (distributed.py)."""
    with process_group(pick_device(cfg.device), cfg.dist_timeout) as dist:
        return Trainer(cfg, resume, dist).run()
