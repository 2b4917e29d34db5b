"""From records to training batches: pick what each record teaches this epoch (a description, a
story, a question or a whole conversation), then tokenise through the chat template, preprocess
images and pad — the one collate function every source shares."""
from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from ..config import VLMConfig
from ..errors import TinyVLMError
from ..tokenizer import IGNORE, IMAGE_SLOT, PAD_ID, Tokenizer
from .episodes import is_episode, learn_flags
from .images import augment, fit_square, load_image, to_tensor
from .records import Record, Turn, image_slots

# The prompts a user's `describe` and `ask` send; training uses the same ones.
PROMPTS = {"short": "Describe the picture.", "long": "Tell a little story about the picture."}
MAX_TOKENS = {"short": 48, "long": 128}  # room to finish a 20-25 or a 60-70 word description
TASKS = ("short", "long", "qa")
ICL_TASK = "icl"  # in-context episodes (data/episodes.py), mixed in from their own records


@dataclass
class Example:
    """What the model reads and writes: `history` (earlier (role, text) turns, if any), then the
    user's `prompt` and the assistant's `target`. The turns hold one <image> slot per image."""
    images: list[str]
    prompt: str
    target: str
    history: tuple[Turn, ...] = ()
    learn: tuple[bool, ...] | None = None  # which assistant turns carry a loss (None: all)

    def turns(self) -> list[Turn]:
        return [*self.history, ("user", self.prompt), ("assistant", self.target)]


def describe_prompt(style: str = "short", n_images: int = 1) -> str:
    return image_slots(" " + PROMPTS[style], n_images)


def ask_prompt(question: str, n_images: int = 1) -> str:
    return image_slots(" " + question.strip(), n_images)


def task_options(record: Record, tasks: tuple[str, ...] = TASKS) -> list[str]:
    """The tasks of `tasks` that a picture-book record has texts for ([] for other records)."""
    x = record.extra
    return [t for t in tasks if (t == "qa" and x.get("questions")) or x.get(t)]


def learned_tasks(records: Iterable[Record], tasks: tuple[str, ...] = TASKS) -> tuple[str, ...]:
    """What training on `records` teaches, in TASKS' order: the picture-book tasks they have texts
    for, 'short' for a caption (a caption is taught under the ShortDesc prompt) and 'chat' for a
    conversation ('icl' for an in-context episode). Kept in a model's config, so that it can say when asked for something else."""
    seen: set[str] = set()
    for r in records:
        options = task_options(r, tasks)
        seen.update(options or [ICL_TASK if is_episode(r) else "chat" if r.turns else "qa" if r.prompt else "short"])
    return tuple(t for t in TASKS + ("chat", ICL_TASK) if t in seen)


def record_to_example(record: Record, rng: random.Random, tasks: tuple[str, ...] = TASKS,
                      prefer: str | None = None) -> Example:
    """One training example from a record. Picture-book records carry paraphrases of a short and a
    long description and questions; the task (`prefer` when the record has it) and the paraphrase
    are drawn from `rng` (seeded per epoch). Other records teach their own text, or one of their
    references (a fresh one each epoch)."""
    x = record.extra
    options = task_options(record, tasks)
    if options:
        task = prefer if prefer in options else rng.choice(options)
        if task == "qa":
            q = rng.choice(x["questions"])
            return Example(record.images, ask_prompt(q["question"], len(record.images)), str(q["answer"]))
        return Example(record.images, describe_prompt(task, len(record.images)), rng.choice(x[task]))
    if record.turns:
        *history, (_, prompt), (_, target) = record.turns
        have = sum(text.count(IMAGE_SLOT) for _, text in record.turns)
        if history:  # pictures without a slot go first, in the first user turn
            history[0] = ("user", image_slots(history[0][1], len(record.images), have))
        else:
            prompt = image_slots(prompt, len(record.images), have)
        return Example(record.images, prompt, target, tuple(history), learn_flags(record))
    text = rng.choice(record.references) if record.references and not record.prompt else record.text
    prompt = record.prompt or " " + PROMPTS["short"]
    return Example(record.images, image_slots(prompt, len(record.images)), text)


def only_turns(learn: list[bool], keep: tuple[bool, ...]) -> list[bool]:
    """`learn` (a token's flag: assistant text) kept only in the assistant turns `keep` marks: the
    j-th run of True is the j-th assistant turn."""
    out, turn, inside = [], -1, False
    for flag in learn:
        if flag and not inside:
            turn += 1
        inside = flag
        out.append(flag and turn < len(keep) and keep[turn])
    return out


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
    """Examples -> {"input_ids", "labels", "images"}; sequences right-padded, labels shifted, the
    loss on assistant turns only. `truncate`: cut a conversation longer than the context (training
    keeps what fits) instead of refusing it (scoring must not score a cut text as if whole).
    `image_tokens`: slots per picture (default `cfg.image_tokens`; fewer for a reduced model)."""

    def __init__(self, tokenizer: Tokenizer, cfg: VLMConfig, fit: str = "pad", truncate: bool = True,
                 image_tokens: int | None = None):
        self.tok, self.cfg, self.truncate = tokenizer, cfg, truncate
        self.image_tokens = image_tokens or cfg.image_tokens
        self.images = ImageCache(cfg.vit_image_size, fit)

    def pixels(self, paths: list[str]) -> torch.Tensor:
        """Pictures (their files) -> model input (N, 3, H, W), through the cache, not augmented."""
        return torch.stack([to_tensor(self.images.get(p)) for p in paths])

    def __call__(self, examples: list[Example], rng: random.Random | None = None,
                 pixels: bool = True, augment_mode: str = "light") -> dict[str, torch.Tensor]:
        """With `rng`, each picture is jittered (images.augment, in `augment_mode`, read with its
        example's text; in colour mode an example's pictures share one hue and saturation draw, so
        that what the text says of their colours together, "same" or "not", stays true). With
        `pixels` False, "images" is None: the caller has the pictures' encodings already."""
        seqs, labels, images = [], [], []
        for ex in examples:
            enc = self.tok.encode_conversation(ex.turns(), [self.image_tokens] * len(ex.images))
            ids, learn = enc.ids, enc.learn
            if ex.learn is not None:
                learn = only_turns(learn, ex.learn)
            if len(ids) - 1 > self.cfg.lm_max_len:
                first = learn.index(True)
                if not self.truncate or first >= self.cfg.lm_max_len:
                    raise TinyVLMError(f"a conversation of {len(ids) - 1} tokens does not fit the model's context "
                                       f"of {self.cfg.lm_max_len} tokens (lm_max_len): {ex.prompt[:60]!r}")
                ids, learn = ids[: self.cfg.lm_max_len + 1], learn[: self.cfg.lm_max_len + 1]
            seqs.append(ids[:-1])
            labels.append([t if keep else IGNORE for t, keep in zip(ids[1:], learn[1:])])
            text = " ".join(t for _, t in ex.turns()) if rng is not None else ""
            turn = rng.random() if rng is not None and augment_mode == "colour" else None
            for p in ex.images if pixels else ():
                img = self.images.get(p)
                if rng is not None:
                    img = augment(img, rng, augment_mode, text, None if turn is None else random.Random(turn))
                images.append(to_tensor(img))
        T = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), T), PAD_ID, dtype=torch.long)
        label_t = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            label_t[i, : len(l)] = torch.tensor(l)
        return {"input_ids": input_ids, "labels": label_t,
                "images": torch.stack(images) if images else None}
