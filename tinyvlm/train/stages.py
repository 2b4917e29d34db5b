"""The stages of a run, each what the one loop (loop.py) computes in turn:

- Encoder pretraining (optional, first, in this order; each an EncoderStage: the image encoder
  learns in place inside the VLM, with a throwaway head):
  - MAEStage (--mae): masked-image modelling on the pictures alone (pretrain.py). RUN/mae/.
  - SigLIPStage (--siglip): pictures against their captions (pretrain.py). RUN/siglip/.
  - ConceptStage (--concept-pretrain): which concepts each picture holds (concepts.py). RUN/concepts/.
- VLMStage: the whole model learns to write. Checkpoint: RUN/checkpoint/ (the model itself).
"""
from __future__ import annotations

import itertools
import math
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..checkpoint import RUN_CHECKPOINT, cpu_state, read_json
from ..concepts import ConceptHead, build_vocab, concept_f1, concept_loss, targets, usable
from ..data.batches import TASKS, Example, record_to_example
from ..data.images import augment, to_tensor
from ..data.records import Record
from ..pretrain import MAE, SigLIP
from .config import PRETRAIN_SHARES
from .loop import STATE, Records, Stage, Stream, optimizer

if TYPE_CHECKING:
    from .run import Trainer

CONCEPT_STAGE, CONCEPT_WEIGHTS = "concepts", "encoder_and_head.safetensors"  # RUN/concepts/: the concept stage
MAE_STAGE, SIGLIP_STAGE = "mae", "siglip"  # RUN/mae/, RUN/siglip/: they hold CONCEPT_WEIGHTS too (encoder.*, then the head's)
ENCODED_BYTES = 512 * 2**20  # what the frozen encoder's kept outputs may take (EncoderCache)


class EncoderCache:
    """The frozen encoder's output per picture, computed the first time a picture comes and read
    back after. Exact: with the encoder frozen, in eval mode (batch-norm statistics fixed, no
    dropout) and without augmentation, a picture's encoding never changes, yet it was the larger
    half of a demo step's forward (docs/speed.md). Bounded in bytes: past `max_bytes` the first
    pictures stay and the rest are encoded each time (in a fixed epoch order, keeping the first
    ones beats replacing the oldest, which would never be hit)."""

    def __init__(self, encoder: torch.nn.Module, max_bytes: int = ENCODED_BYTES):
        self.encoder, self.room, self.store = encoder, max_bytes, {}

    @torch.no_grad()
    def __call__(self, paths: list[str], pixels: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Pictures (their files) -> (N, 1 + patches, vit_width). `pixels` gives the model input
        (n, 3, H, W) of the pictures not kept yet, so those alone are read and preprocessed."""
        new = [i for i, p in enumerate(paths) if p not in self.store]
        fresh = dict(zip(new, self.encoder(pixels([paths[i] for i in new])))) if new else {}
        for i, e in fresh.items():
            if self.room > 0 and paths[i] not in self.store:
                self.store[paths[i]] = e.clone()  # not a view that would keep the whole batch alive
                self.room -= e.numel() * e.element_size()
        return torch.stack([fresh[i] if i in fresh else self.store[p] for i, p in enumerate(paths)])


class EncoderAndHead(torch.nn.Module):
    """The image encoder with a concept head on top: one module, so DistributedDataParallel can
    wrap what the concept stage trains (its weights are named encoder.* and head.*)."""

    def __init__(self, encoder: torch.nn.Module, head: ConceptHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> the head's scores
        return self.head(self.encoder(pixels))


class EncoderStage(Stage):
    """A stage that trains the VLM's image encoder, in place, with a throwaway head, before the VLM
    stage: what a subclass adds is `build` (the module: the encoder as `encoder` + its head), `uses`
    (which records it learns from) and its loss. Checkpoint: RUN/<name>/ with the module's weights."""

    def __init__(self, trainer: "Trainer"):
        super().__init__(trainer, *trainer.cfg.stage_budgets()[self.name])
        self.tag = {"stage": self.name}
        self.earlier = tuple(itertools.takewhile(lambda s: s != self.name, PRETRAIN_SHARES))
        self.encoder = trainer.vlm.model.vision
        self.grid = trainer.vlm.cfg.vit_image_size // trainer.vlm.cfg.vit_patch_size
        state_file = self.dir / STATE
        state = read_json(state_file) if state_file.is_file() else None
        self.prepare(state)
        torch.manual_seed(self.cfg.seed)
        self.module = self.net = self.build()
        self.opt = optimizer(self.module, self.cfg)
        if state is not None:
            self.module.load_state_dict(load_file(self.dir / CONCEPT_WEIGHTS, device=str(trainer.device)))
            self.restore(state)
        n = self.cfg.eval_batches * self.cfg.batch_size if trainer.dist.is_main else 0  # rank 0 validates
        self.val = list(itertools.islice((r for r in trainer.validation_records() if self.uses(r) and self.readable(r)), n))

    def prepare(self, state: dict | None):
        """What the head's shape depends on, from the checkpoint's state or made afresh."""

    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def uses(self, record: Record) -> bool:
        return len(record.images) == 1

    def skips(self, record: Record) -> bool:
        return not self.uses(record) or super().skips(record)

    def pixels(self, records: list[Record], rngs: list[random.Random] | None = None,
               texts: list[str] | None = None) -> torch.Tensor:
        """The records' pictures (N, 3, H, W); with `rngs` (and --augment), each jittered by its own,
        read with its text of `texts` (None: the pictures are read alone, as in MAE)."""
        t = self.trainer
        if rngs is None or not self.cfg.augment:
            return t.collate.pixels([r.images[0] for r in records]).to(t.device)
        images = [augment(t.collate.images.get(r.images[0]), rng, self.cfg.augment, text)
                  for r, rng, text in zip(records, rngs, texts or [""] * len(records))]
        return torch.stack([to_tensor(im) for im in images]).to(t.device)

    def next_batch(self, records: Records) -> tuple[list[Record], list[random.Random]]:
        pairs = list(itertools.islice(records, self.cfg.batch_size))
        return [r for r, _ in pairs], [rng for _, rng in pairs]

    def held_out(self) -> Iterator[list[Record]]:
        """The validation records in batches, with the module in eval mode meanwhile."""
        self.module.eval()
        bs = self.cfg.batch_size
        yield from (self.val[i:i + bs] for i in range(0, len(self.val), bs))
        self.module.train()

    def estimate_steps(self, records: Records) -> int:
        """How many steps a minutes budget buys, so the stage warms up over a tenth of them at most
        (not over --warmup steps, which may be all a short stage gets): times training passes
        without updating the weights (batch-norm statistics move a little, as in VLMStage)."""
        self.train_mode()
        times = []
        for _ in range(3):  # the first pass only warms up
            t0 = time.perf_counter()
            self.forward(records, 0)[0].backward()
            times.append(time.perf_counter() - t0)
        self.module.zero_grad(set_to_none=True)
        per_step = sum(times[1:]) / 2 * self.cfg.grad_accum * 1.15  # + data loading, eval, saving
        return max(1, int(self.minutes * 60 / per_step))

    def keeps(self, row: dict) -> bool:
        """A later stage's rows stay if that stage has a checkpoint (its own resume trims them);
        else they were written by a run that stopped before saving, and go."""
        if row.get("stage") in (*self.earlier, self.name):
            return super().keeps(row)
        return (self.trainer.out / (row.get("stage") or RUN_CHECKPOINT) / STATE).is_file()

    def write_weights(self, folder: Path):
        save_file(cpu_state(self.module), folder / CONCEPT_WEIGHTS)


class ConceptStage(EncoderStage):
    """The encoder and a ConceptHead learn each picture's concepts: per patch for scene graphs,
    per picture for caption words. Validation: held-out concept loss and F1."""
    name, loss_key = CONCEPT_STAGE, "concept_loss"

    def prepare(self, state: dict | None):
        # built once, by rank 0, and shared: every process must score the same concepts
        t = self.trainer
        self.vocab = state["concepts"] if state else t.dist.broadcast_object(
            build_vocab(t.training_records()) if t.dist.is_main else None)
        self.index = {c: i for i, c in enumerate(self.vocab)}

    def build(self) -> torch.nn.Module:
        self.head = ConceptHead(self.trainer.vlm.cfg.vit_width, len(self.vocab)).to(self.trainer.device)
        self.both = EncoderAndHead(self.encoder, self.head)
        return self.both

    def uses(self, record: Record) -> bool:
        return usable(record)

    def scores(self, records: list[Record], net: torch.nn.Module | None = None) -> torch.Tensor:
        with self.trainer.autocast():
            return (net or self.both)(self.pixels(records))

    def forward(self, records: Records, micro: int):
        batch, _ = self.next_batch(records)
        loss = concept_loss(self.scores(batch, self.net), [targets(r, self.index, self.grid) for r in batch])
        return loss, {"images": len(batch)}

    @torch.no_grad()
    def validate(self) -> dict | None:
        """Held-out concept loss and F1 (is each concept in the picture?), for the log."""
        if not self.val:
            return None
        loss, tp, pred, true = 0.0, 0, 0, 0
        for recs in self.held_out():
            s, tgt = self.scores(recs), [targets(r, self.index, self.grid) for r in recs]
            loss += concept_loss(s, tgt).item() * len(recs)
            a, b, c = concept_f1(s, tgt)
            tp, pred, true = tp + a, pred + b, true + c
        return {"val_concept_loss": loss / len(self.val), "val_concept_f1": 2 * tp / max(1, pred + true)}

    def validated(self, figures: dict, last: bool, bar: tqdm):
        if last and self.cfg.progress:
            print(f"concept stage: {self.step} steps, {len(self.vocab)} concepts, held-out concept F1 "
                  f"{figures['val_concept_f1']:.2f}", file=sys.stderr)

    def extra_state(self) -> dict:
        return {"concepts": self.vocab}


class MAEStage(EncoderStage):
    """Masked-image modelling on the pictures alone (pretrain.MAE): any single-picture record.
    Validation: the held-out reconstruction loss, under masks drawn from a fixed seed."""
    name, loss_key = MAE_STAGE, "mae_loss"

    def build(self) -> torch.nn.Module:
        t = self.trainer
        return MAE(self.encoder, t.vlm.cfg, self.cfg.mask_ratio).to(t.device)

    def forward(self, records: Records, micro: int):
        batch, rngs = self.next_batch(records)
        with self.trainer.autocast():
            return self.net(self.pixels(batch, rngs)), {"images": len(batch)}

    @torch.no_grad()
    def validate(self) -> dict | None:
        if not self.val:
            return None
        with torch.random.fork_rng():  # the same masks at every validation; training's draws untouched
            torch.manual_seed(self.cfg.seed)
            loss = sum(self.module(self.pixels(recs)).item() * len(recs) for recs in self.held_out())
        return {"val_mae_loss": loss / len(self.val)}

    def validated(self, figures: dict, last: bool, bar: tqdm):
        if last and self.cfg.progress:
            print(f"MAE stage: {self.step} steps, held-out reconstruction loss {figures['val_mae_loss']:.3f} "
                  f"(1.0: the mean of each patch)", file=sys.stderr)


class SigLIPStage(EncoderStage):
    """Picture-caption contrast (pretrain.SigLIP) on records with a text: a picture-book record's
    short description, a photo's caption (one of its references, fresh each epoch), else its text.
    Validation: the held-out loss and how often a picture's best-scoring caption in its batch is
    its own (top-1; chance is 1 / batch size)."""
    name, loss_key = SIGLIP_STAGE, "siglip_loss"

    def build(self) -> torch.nn.Module:
        t = self.trainer
        return SigLIP(self.encoder, t.vlm.cfg).to(t.device)

    def uses(self, record: Record) -> bool:
        return super().uses(record) and bool(record.text or record.references)

    def score(self, batch: list[Record], rngs: list[random.Random], net: torch.nn.Module, train: bool = False):
        """The loss and logits of a batch: each picture against each record's caption (drawn with
        its rng, which in training also jitters the picture under --augment); pictures that are the
        same file count as matches (a photo's records may share it)."""
        tok, device = self.trainer.vlm.tokenizer, self.trainer.device
        texts = [record_to_example(r, rng, ("short",)).target for r, rng in zip(batch, rngs)]
        captions = [tok.encode_text(text) or [0] for text in texts]
        offsets = torch.tensor([0, *itertools.accumulate(len(c) for c in captions)][:-1], device=device)
        ids = torch.tensor([i for c in captions for i in c], device=device)
        paths = [r.images[0] for r in batch]
        same = torch.tensor([[a == b for b in paths] for a in paths], device=device)
        # a picture is read with every caption it matches here, so --augment colour never turns a
        # photo whose other record in the batch says "a brown dog"
        read_with = [" ".join(t for t, q in zip(texts, paths) if q == p) for p in paths]
        with self.trainer.autocast():
            return net(self.pixels(batch, rngs if train else None, read_with), ids, offsets, same)

    def forward(self, records: Records, micro: int):
        batch, rngs = self.next_batch(records)
        return self.score(batch, rngs, self.net, train=True)[0], {"images": len(batch)}

    @torch.no_grad()
    def validate(self) -> dict | None:
        if not self.val:
            return None
        loss, right = 0.0, 0
        for recs in self.held_out():
            rngs = [random.Random(f"{self.cfg.seed}:val:{i}") for i in range(len(recs))]
            batch_loss, logits = self.score(recs, rngs, self.module)
            loss += batch_loss.item() * len(recs)
            right += (logits.argmax(1) == torch.arange(len(recs), device=logits.device)).sum().item()
        return {"val_siglip_loss": loss / len(self.val), "val_siglip_top1": right / len(self.val)}

    def validated(self, figures: dict, last: bool, bar: tqdm):
        if last and self.cfg.progress:
            print(f"SigLIP stage: {self.step} steps, held-out caption top-1 in a batch of {self.cfg.batch_size}: "
                  f"{figures['val_siglip_top1']:.2f}", file=sys.stderr)


PRETRAIN_STAGES = {MAE_STAGE: MAEStage, SIGLIP_STAGE: SigLIPStage, CONCEPT_STAGE: ConceptStage}  # in PRETRAIN_SHARES' order


class VLMStage(Stage):
    """The whole model (or all but a frozen encoder) learns to write each record's text after its
    prompt. Validation: the mean loss over fixed held-out batches."""
    name, label, earlier = RUN_CHECKPOINT, "vlm", tuple(PRETRAIN_SHARES)

    def __init__(self, trainer: "Trainer"):
        super().__init__(trainer, *trainer.cfg.stage_budgets()["vlm"])
        self.module = self.net = trainer.vlm.model
        self.opt = optimizer(self.module, self.cfg)
        self.best_val = float("inf")
        self.icl_epoch, self.icl_pos = 0, 0
        state_file = self.dir / STATE
        if state_file.is_file():  # the model's weights were loaded with it (Trainer)
            state = read_json(state_file)
            self.restore(state)
            self.best_val = state["best_val"]
            self.icl_epoch, self.icl_pos = state.get("icl_epoch", 0), state.get("icl_pos", 0)
        self.icl = None  # the episodes' own stream, opened when the loop starts
        model, cfg = trainer.vlm.model, self.cfg
        # one process only: with several, the connector would run outside DistributedDataParallel's forward
        self.encoded = (EncoderCache(model.vision) if cfg.freeze_encoder and not cfg.augment
                        and not model.reduce.active and not trainer.dist.enabled else None)
        self.val_batches = self._val_examples()
        self.val_icl = self._val_episodes()

    def _val_examples(self) -> list[list[Example]]:
        rng = random.Random(self.cfg.seed)
        n = self.cfg.eval_batches * self.cfg.batch_size if self.trainer.dist.is_main else 0  # rank 0 validates
        recs = list(itertools.islice(filter(self.readable, self.trainer.validation_records()), n))
        if not recs:
            return []
        ex = [record_to_example(r, rng, self.cfg.text_tasks() or TASKS) for r in recs]
        bs = self.cfg.batch_size
        return [ex[i:i + bs] for i in range(0, len(ex), bs)]

    def _val_episodes(self) -> list[list[Example]]:
        """Fixed batches of episodes for a held-out episode loss. Episodes have no pictures of
        their own to hold out, so these are the last records of the episode data, which training
        reaches only after an epoch of the others."""
        src = self.trainer.icl_src
        if src is None:
            return []
        n = min(self.cfg.eval_batches * self.cfg.batch_size, max(1, len(src) // 20))
        recs = list(src)[-n:]
        rng = random.Random(self.cfg.seed)
        ex = [record_to_example(r, rng) for r in recs]
        bs = self.cfg.batch_size
        return [ex[i:i + bs] for i in range(0, len(ex), bs)]

    def train_mode(self):
        """With freeze_encoder the encoder is left out of the gradient and kept in eval mode, so
        its batch-norm statistics stay as the concept stage left them."""
        self.module.train()
        if self.cfg.freeze_encoder:
            self.module.vision.eval().requires_grad_(False)

    def batch_examples(self, records: Records, step: int) -> list[Example]:
        """A micro-batch of examples, all of this step's task where the records have it. Why one
        task a step: a long story beside short answers pads every sequence to the story's length,
        and mixed picture-book batches were half padding (one task a step trains 1.7x more samples
        a minute: docs/training.md)."""
        if self.cfg.icl_step(step):  # an episode step: the episodes' own stream (M2IXT-style mixing)
            if self.icl is None:
                self.icl = iter(self._icl_stream())
            return [record_to_example(r, rng) for r, rng in itertools.islice(self.icl, self.cfg.batch_size)]
        tasks = self.cfg.text_tasks()
        text_steps = step - math.floor(step * self.cfg.icl_share) if self.trainer.icl_src else step  # steps before this one that were not episodes
        task = tasks[text_steps % len(tasks)]
        return [record_to_example(r, rng, tasks, prefer=task)
                for r, rng in itertools.islice(records, self.cfg.batch_size)]

    def _icl_stream(self) -> Stream:
        dist = self.trainer.dist
        self.icl_stream = Stream(self.trainer.icl_src, self.cfg, self.icl_epoch, self.icl_pos,
                                 rank=dist.rank, world=dist.world)
        return self.icl_stream

    def loss(self, batch: dict, net: torch.nn.Module | None = None,
             examples: list[Example] | None = None) -> torch.Tensor:
        """The batch's loss; given the `examples` it was made from, the frozen encoder's output for
        their pictures comes from the EncoderCache."""
        device = self.trainer.device
        batch = {k: v.to(device) if v is not None else None for k, v in batch.items()}
        ids, images, labels = batch["input_ids"], batch["images"], batch["labels"]
        paths = [p for ex in examples for p in ex.images] if examples is not None else []
        with self.trainer.autocast():
            if self.encoded is not None and paths:
                encoded = self.encoded(paths, lambda new: self.trainer.collate.pixels(new).to(device))
                return (net or self.module)(ids, labels=labels, features=list(self.module.connector(encoded)))[1]
            return (net or self.module)(ids, images, labels)[1]

    def forward(self, records: Records, micro: int):
        examples = self.batch_examples(records, self.step)
        aug_rng = None
        if self.cfg.augment:  # fresh draws for each micro-batch and process (the first keeps the seed of a step)
            aug_rng = random.Random(f"aug:{self.cfg.seed}:{self.step}" + (f":{micro}" if micro else ""))
        batch = self.trainer.collate(examples, aug_rng, pixels=self.encoded is None, augment_mode=self.cfg.augment)
        return self.loss(batch, self.net, examples), {"samples": len(examples), "tokens": batch["input_ids"].numel()}

    @torch.no_grad()
    def validate(self) -> dict | None:
        if not self.val_batches and not self.val_icl:
            return None
        self.module.eval()
        figures = {}
        for key, batches in (("val_loss", self.val_batches), ("val_icl_loss", self.val_icl)):
            if batches:
                losses = [self.loss(self.trainer.collate(b, pixels=self.encoded is None), examples=b).item()
                          for b in batches]
                figures[key] = sum(losses) / len(losses)
        self.train_mode()
        return figures

    def validated(self, figures: dict, last: bool, bar: tqdm):
        if "val_loss" in figures:
            self.best_val = min(self.best_val, figures["val_loss"])
        shown = {"val_loss": "val loss", "val_icl_loss": "episodes"}
        bar.write(f"step {self.step}: " + ", ".join(f"{shown[k]} {v:.4f}" for k, v in figures.items()))

    def estimate_steps(self, records: Records) -> int:
        """Estimate how many steps a minutes budget buys (for warmup and the progress bar): time
        forward+backward passes, one batch per task, without updating the model."""
        collate = self.trainer.collate
        steps = range(len(self.cfg.tasks) if self.trainer.icl_src is None else max(4, len(self.cfg.tasks) + 1))
        batches = [collate(self.batch_examples(records, step)) for step in steps]
        self.icl = None  # the run starts the episodes from where its state says, not past these
        self.train_mode()
        times = []
        for batch in [batches[0], *batches]:  # the first pass only warms up
            t0 = time.perf_counter()
            self.loss(batch).backward()
            times.append(time.perf_counter() - t0)
        self.module.zero_grad(set_to_none=True)
        per_step = sum(times[1:]) / len(batches) * self.cfg.grad_accum * 1.15  # + data loading, eval, saving
        return max(1, int(self.minutes * 60 / per_step))

    def write_weights(self, folder: Path):
        vlm = self.trainer.vlm
        vlm.figures = {"steps": self.step, **({"best_val_loss": round(self.best_val, 4)}
                                              if math.isfinite(self.best_val) else {})}  # for the model card
        vlm.write_files(folder)

    def extra_state(self) -> dict:
        icl = getattr(self, "icl_stream", None)
        where = {"icl_epoch": icl.epoch, "icl_pos": icl.pos} if icl is not None else {}
        return {"best_val": self.best_val, **where}
