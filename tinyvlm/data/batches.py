"""From records to training batches: pick what each record teaches this epoch (a description, a
story or a question), then tokenise, preprocess images and pad — the one collate function every
source shares."""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..config import VLMConfig
from ..errors import TinyVLMError
from ..model import IGNORE
from ..tokenizer import PAD_ID, Tokenizer
from .images import augment, fit_square, load_image, to_tensor
from .records import Record, image_slots

# The prompts a user's `describe` and `ask` send; training uses the same ones.
PROMPTS = {"short": "Describe the picture.", "long": "Tell a little story about the picture."}
MAX_TOKENS = {"short": 48, "long": 128}  # room to finish a 20-25 or a 60-70 word description
TASKS = ("short", "long", "qa")


@dataclass
class Example:
    images: list[str]
    prompt: str  # with one <image> slot per image
    target: str


def describe_prompt(style: str = "short", n_images: int = 1) -> str:
    return image_slots(" " + PROMPTS[style], n_images)


def ask_prompt(question: str, n_images: int = 1) -> str:
    return image_slots(" " + question.strip(), n_images)


def record_to_example(record: Record, rng: random.Random, tasks: tuple[str, ...] = TASKS,
                      prefer: str | None = None) -> Example:
    """One training example from a record. Picture-book records carry paraphrases of a short and a
    long description and questions; the task (`prefer` when the record has it) and the paraphrase
    are drawn from `rng` (seeded per epoch). Other records teach their own text, or one of their
    references (a fresh one each epoch)."""
    x = record.extra
    options = [t for t in tasks if (t == "qa" and x.get("questions")) or x.get(t)]
    if options:
        task = prefer if prefer in options else rng.choice(options)
        if task == "qa":
            q = rng.choice(x["questions"])
            return Example(record.images, ask_prompt(q["question"], len(record.images)), str(q["answer"]))
        return Example(record.images, describe_prompt(task, len(record.images)), rng.choice(x[task]))
    text = rng.choice(record.references) if record.references and not record.prompt else record.text
    prompt = record.prompt or " " + PROMPTS["short"]
    return Example(record.images, image_slots(prompt, len(record.images)), text)


class ImageCache:
    """Decoded, resized images kept as uint8 arrays, so small datasets are decoded once; bounded in
    bytes (oldest out first), so memory stays flat however many images a dataset has."""

    def __init__(self, size: int, fit: str = "pad", max_bytes: int = 512 * 2**20):
        self.size, self.fit, self.capacity = size, fit, max(1, max_bytes // (size * size * 3))
        self.store: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, path: str) -> Image.Image:
        arr = self.store.get(path)
        if arr is None:
            arr = np.asarray(fit_square(load_image(path), self.size, self.fit))
            self.store[path] = arr
            if len(self.store) > self.capacity:
                self.store.popitem(last=False)
        return Image.fromarray(arr)


class Collator:
    """Examples -> {"input_ids", "labels", "images"}; sequences right-padded, labels shifted."""

    def __init__(self, tokenizer: Tokenizer, cfg: VLMConfig, fit: str = "pad"):
        self.tok, self.cfg = tokenizer, cfg
        self.images = ImageCache(cfg.vit_image_size, fit)

    def __call__(self, examples: list[Example], rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        seqs, labels, pixels = [], [], []
        for ex in examples:
            ids, n_prompt = self.tok.encode_example(ex.prompt, self.cfg.image_tokens, ex.target)
            if n_prompt >= self.cfg.lm_max_len:
                raise TinyVLMError(f"prompt of {n_prompt} tokens leaves no room for text in lm_max_len "
                                   f"{self.cfg.lm_max_len}: {ex.prompt[:60]!r}")
            ids = ids[: self.cfg.lm_max_len + 1]  # over-long targets are cut, not dropped
            seqs.append(ids[:-1])
            labels.append([IGNORE] * (n_prompt - 1) + ids[n_prompt:])
            for p in ex.images:
                img = self.images.get(p)
                pixels.append(to_tensor(augment(img, rng) if rng is not None else img))
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
        label_t = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            label_t[i, : len(l)] = torch.tensor(l)
        return {"input_ids": input_ids, "labels": label_t,
                "images": torch.stack(pixels) if pixels else None}
