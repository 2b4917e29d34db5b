"""DeViL's translator (Dani et al. 2023, "DeViL: Decoding Vision features into Language"): a small
network that turns the frozen encoder's features, from any of its layers and at any location,
into tokens the frozen decoder reads in place of a picture's image tokens.

Trained on whole-picture descriptions with dropout per layer (each example reads one layer,
drawn at random) and per location (each example keeps a random subset of the patches, often one,
sometimes their mean), it learns to let the decoder say what a single location shows. Then
- the DeViL map of a word at layer k is the word's log-probability (the negative LM loss) given
  only one location's feature (`devil_maps`);
- a layer description is the text the decoder writes from one location's feature, or from the
  mean of all of them (`describe_layer`): "what does block k see here".

`tinyvlm train-explainer` trains it through the one training loop (tinyvlm/train/loop.py) and
saves translator.safetensors and explainer.json (safetensors only) in OUT/translator/, beside the
run's metrics.jsonl; OUT is by default MODEL/explainer/.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..api import TinyVLM
from ..checkpoint import cpu_state, read_json
from ..data.batches import describe_prompt
from ..data.dataset import open_records
from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..generate import Sampling, stream
from ..model import IGNORE
from ..tokenizer import EOS_ID, PAD_ID
from ..train.config import TrainConfig
from ..train.distributed import Dist
from ..train.loop import STATE, Records, Stage, optimizer, run_stage
from ..train.run import Trainer
from .methods import Scorer, grid_of

TRANSLATOR, EXPLAINER = "translator.safetensors", "explainer.json"
EXPLAINER_DIR = "explainer"  # its default place, inside the model or run folder
WEIGHTS_DIR = "translator"  # inside it: the translator's weights (the training loop's checkpoint)


class Translator(nn.Module):
    """Encoder features of one layer (N, L, vit_width) -> decoder-width tokens (N, L, lm_width):
    a LayerNorm and a two-layer MLP per layer (each layer's features live in their own space),
    plus a learned embedding saying which layer they came from."""

    def __init__(self, vit_width: int, lm_width: int, layers: int):
        super().__init__()
        self.norm = nn.ModuleList(nn.LayerNorm(vit_width) for _ in range(layers))
        self.fc = nn.ModuleList(nn.Linear(vit_width, 2 * lm_width) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(2 * lm_width, lm_width) for _ in range(layers))
        self.layer = nn.Parameter(torch.zeros(layers, lm_width))

    def forward(self, feats: torch.Tensor, layer: int) -> torch.Tensor:
        return self.proj[layer](F.gelu(self.fc[layer](self.norm[layer](feats)))) + self.layer[layer]


def layer_features(vlm: TinyVLM, pixels: torch.Tensor) -> list[torch.Tensor]:
    """(N, 3, H, W) -> one (N, patches, vit_width) per encoder layer: the features entering each
    block, then the final output (vit_depth + 1 layers; [CLS] left out, only locations)."""
    _, states, _ = vlm.model.vision(pixels, trace=True)
    return [s[:, 1:] for s in states]


@dataclass
class Explainer:
    """A trained translator and what it was trained on."""
    translator: Translator
    layers: int
    steps: int

    @classmethod
    def load(cls, folder: str | Path, vlm: TinyVLM) -> "Explainer":
        folder = Path(folder)
        if (folder / WEIGHTS_DIR / EXPLAINER).is_file():
            folder = folder / WEIGHTS_DIR
        if not (folder / EXPLAINER).is_file():
            raise TinyVLMError(f"no trained explainer in {folder}: train one with "
                               f"`tinyvlm train-explainer --model MODEL --data DATA --out {folder}`")
        meta = read_json(folder / EXPLAINER)
        cfg = vlm.cfg
        if (meta.get("vit_width"), meta.get("lm_width"), meta.get("layers")) != (cfg.vit_width, cfg.lm_width, cfg.vit_depth + 1):
            raise TinyVLMError(f"the explainer in {folder} was trained for another model (widths "
                               f"{meta.get('vit_width')}/{meta.get('lm_width')}, {meta.get('layers')} layers)")
        t = Translator(cfg.vit_width, cfg.lm_width, meta["layers"])
        try:
            t.load_state_dict(load_file(folder / TRANSLATOR))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise TinyVLMError(f"cannot read the explainer's weights {folder / TRANSLATOR}: {e}") from None
        return cls(t.to(vlm.device).eval(), meta["layers"], meta.get("steps", 0))

    def check_layer(self, layer: int | None) -> int:
        """None -> the last layer (the encoder's output)."""
        if layer is None:
            return self.layers - 1
        check_range("layer", layer, 0, self.layers - 1, integer=True,
                    note=f"an encoder layer: 0 = the patch embeddings, {self.layers - 1} = the encoder's output")
        return layer


@torch.no_grad()
def devil_maps(vlm: TinyVLM, explainer: Explainer, pixels: torch.Tensor, scorer: Scorer, layer: int) -> list[np.ndarray]:
    """Each word's log-probability given one location's translated feature of `layer`, at every
    location: one (grid_h, grid_w) map a word, in nats."""
    feats = layer_features(vlm, pixels)[layer][0]  # (patches, vit_width)
    tokens = explainer.translator(feats[:, None], layer)  # (patches, 1, lm_width): one location a row
    single = Scorer(vlm, scorer.text, 1)  # the same text, laid out for one image token
    ids = torch.tensor([single.ids] * len(feats), device=pixels.device)
    logits, _ = vlm.model(ids, features=list(tokens))
    scores = single.word_logprobs(logits, ids)  # (patches, words)
    g = grid_of(vlm.cfg)
    return [scores[:, i].view(*g).cpu().numpy() for i in range(scores.shape[1])]


@torch.no_grad()
def describe_layer(vlm: TinyVLM, explainer: Explainer, pixels: torch.Tensor, layer: int,
                   locations: list[int] | None = None, max_new_tokens: int = 24) -> dict:
    """What block `layer` sees: the decoder's greedy text from the mean of all locations' features
    ("pooled") and from each of `locations` alone (row-major patch indices; default none)."""
    feats = layer_features(vlm, pixels)[layer][0]  # (patches, vit_width)
    P = feats.shape[0]
    locations = list(locations or [])
    for i in locations:
        check_range("location", i, 0, P - 1, integer=True, note="a row-major patch index")
    inputs = [feats.mean(0, keepdim=True)] + [feats[i:i + 1] for i in locations]
    tokens = [explainer.translator(x[None], layer)[0] for x in inputs]  # each (1, lm_width)
    prompt = vlm.tokenizer.encode_conversation([("user", describe_prompt("short"))], [1], "").ids
    rows: list[list[int]] = [[] for _ in inputs]
    for tok in stream(vlm.model, [prompt] * len(inputs), None, Sampling(max_new_tokens=max_new_tokens), features=tokens):
        if tok.id != EOS_ID:
            rows[tok.row].append(tok.id)
    texts = [vlm.tokenizer.decode(r) for r in rows]
    return {"layer": layer, "pooled": texts[0], "locations": dict(zip(locations, texts[1:]))}


# --- training --------------------------------------------------------------------------------
@dataclass
class ExplainerConfig:
    model: str
    data: str
    out: str | None = None     # default: MODEL/explainer
    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    single: float = 0.4        # share of examples that keep one location only
    pooled: float = 0.2        # share that read the mean of all locations, as one token
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_range("steps", self.steps, 1, MAX_COUNT, integer=True)
        check_range("batch_size", self.batch_size, 1, MAX_COUNT, integer=True)
        check_range("lr", self.lr, 0, 1, lo_open=True, note="the learning rate")
        check_range("single", self.single, 0, 1, note="a share of the examples")
        check_range("pooled", self.pooled, 0, 1, note="a share of the examples")
        check_seed("seed", self.seed)
        if self.single + self.pooled > 1:
            raise TinyVLMError(f"single + pooled must be at most 1; got {self.single} + {self.pooled}")


class ExplainerTrainer(Trainer):
    """A training run over a trained model: the model is loaded and frozen, only the translator
    learns. Reuses Trainer's data, log and picture checks, so the one loop (loop.py) runs it."""

    def __init__(self, ecfg: ExplainerConfig):
        self.ecfg = ecfg
        self.out = Path(ecfg.out) if ecfg.out else Path(ecfg.model) / EXPLAINER_DIR
        self.vlm = TinyVLM.from_pretrained(ecfg.model)
        self.cfg = TrainConfig(data=ecfg.data, out=str(self.out), steps=ecfg.steps, batch_size=ecfg.batch_size,
                               lr=ecfg.lr, warmup=min(100, max(1, ecfg.steps // 10)), seed=ecfg.seed,
                               dtype="fp32", device="cpu", eval_every=max(1, min(200, ecfg.steps)),
                               save_every=max(1, min(400, ecfg.steps)), progress=ecfg.progress, tasks=("short",))
        self.device, self.dist = self.vlm.device, Dist()  # one process: the translator is small
        self.use_bf16, self.precision = False, "precision: fp32"
        self.train_src = open_records(ecfg.data, "train")
        self.val_src, self.skip = self._validation_source()
        from ..data.batches import Collator
        self.collate = Collator(self.vlm.tokenizer, self.vlm.cfg, self.vlm.image_fit)
        self.broken, self.reported, self.read = {}, set(), set()
        self.vlm.model.eval().requires_grad_(False)
        if (self.out / WEIGHTS_DIR / STATE).is_file():
            raise TinyVLMError(f"{self.out} already holds an explainer: choose another --out, or remove it")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "metrics.jsonl").write_text("")

    def run(self) -> Explainer:
        stage = ExplainerStage(self)
        run_stage(stage)
        return Explainer(stage.translator.eval(), stage.layers, stage.step)


def _text(record, rng: random.Random) -> str | None:
    short = record.extra.get("short")
    return rng.choice(short) if short else (rng.choice(record.references) if record.references else record.text or None)


class ExplainerStage(Stage):
    """The translator learns to make the frozen decoder write each picture's description from one
    encoder layer's features at a random subset of locations. Validation: held-out loss with one
    location kept, the setting its maps use."""
    name, tag, loss_key = WEIGHTS_DIR, {"stage": "explainer"}, "loss"

    def __init__(self, trainer: ExplainerTrainer):
        super().__init__(trainer, trainer.ecfg.steps, None)
        cfg = trainer.vlm.cfg
        self.layers = cfg.vit_depth + 1
        torch.manual_seed(trainer.ecfg.seed)
        self.translator = self.module = Translator(cfg.vit_width, cfg.lm_width, self.layers).to(trainer.device)
        self.opt = optimizer(self.translator, self.cfg)
        n = self.cfg.eval_batches * self.cfg.batch_size
        self.val = list(itertools.islice((r for r in trainer.validation_records()
                                          if len(r.images) == 1 and self.readable(r)), n))

    def skips(self, record) -> bool:
        return len(record.images) != 1 or super().skips(record)

    def batch(self, records: list, rng: random.Random, single_only: bool = False) -> torch.Tensor:
        """The loss over records, each reading one layer at some of its locations."""
        t, e = self.trainer, self.trainer.ecfg
        vlm = t.vlm
        pixels = t.collate.pixels([r.images[0] for r in records]).to(t.device)
        with torch.no_grad():
            feats = layer_features(vlm, pixels)  # per layer (N, P, C)
        P = feats[0].shape[1]
        tokens, seqs = [], []
        for i, r in enumerate(records):
            layer = rng.randrange(self.layers)
            x, u = feats[layer][i], rng.random()
            if single_only or u < e.single:
                x = x[rng.randrange(P)][None]
            elif u < e.single + e.pooled:
                x = x.mean(0, keepdim=True)
            else:
                keep = [j for j in range(P) if rng.random() < rng.uniform(0.2, 1.0)] or [rng.randrange(P)]
                x = x[keep]
            tokens.append(self.translator(x[None], layer)[0])
            text = _text(r, rng) or ""
            enc = vlm.tokenizer.encode_conversation([("user", describe_prompt("short")), ("assistant", text)], [len(x)])
            seqs.append(enc)
        T = max(len(s.ids) for s in seqs)
        ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
        labels = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s.ids)] = torch.tensor(s.ids)
            lab = [tok if learn else IGNORE for tok, learn in zip(s.ids[1:], s.learn[1:])]
            labels[i, :len(lab)] = torch.tensor(lab)
        _, loss = vlm.model(ids.to(t.device), labels=labels.to(t.device), features=tokens)
        return loss

    def forward(self, records: Records, micro: int):
        pairs = list(itertools.islice(records, self.cfg.batch_size))
        rng = random.Random(f"{self.cfg.seed}:explainer:{self.step}:{micro}")
        return self.batch([r for r, _ in pairs], rng), {"samples": len(pairs)}

    @torch.no_grad()
    def validate(self) -> dict | None:
        if not self.val:
            return None
        self.translator.eval()
        bs, rng, total = self.cfg.batch_size, random.Random(f"{self.cfg.seed}:explainer:val"), 0.0
        for i in range(0, len(self.val), bs):
            total += self.batch(self.val[i:i + bs], rng, single_only=True).item() * len(self.val[i:i + bs])
        self.translator.train()
        return {"val_loss_one_location": total / len(self.val)}

    def train_mode(self):
        self.translator.train()

    def write_weights(self, folder: Path):
        cfg = self.trainer.vlm.cfg
        save_file(cpu_state(self.translator), folder / TRANSLATOR)
        meta = {"layers": self.layers, "vit_width": cfg.vit_width, "lm_width": cfg.lm_width, "steps": self.step,
                "config": {k: v for k, v in asdict(self.trainer.ecfg).items() if k != "progress"}}
        (folder / EXPLAINER).write_text(json.dumps(meta, indent=2))


def train_explainer(cfg: ExplainerConfig) -> Explainer:
    """Train a DeViL translator for a trained model; it is saved in `cfg.out` (default MODEL/explainer)."""
    return ExplainerTrainer(cfg).run()
