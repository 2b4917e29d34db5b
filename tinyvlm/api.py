"""`TinyVLM`: a trained model with its tokenizer, loaded from and saved to a directory, with the
calls a user wants — describe a picture, complete a description, answer a question."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CONCEPT_HEAD, CONFIG, TOKENIZER, WEIGHTS, atomic_dir, cpu_state, read_json, resolve
from .concepts import ConceptHead, Grounding
from .config import VLMConfig
from .data.batches import MAX_TOKENS, Collator, Example, ask_prompt, describe_prompt
from .data.images import preprocess
from .errors import TinyVLMError
from .generate import Sampling, generate
from .model import IGNORE, VisionLanguageModel
from .tokenizer import Tokenizer

ImageLike = "str | os.PathLike | Image.Image"


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


class TinyVLM:
    """A model, its tokenizer and, when its encoder was trained on concepts and then frozen, the
    concept head that reads that encoder (`concepts` names the head's outputs): what lets
    `Sampling(ground=p)` keep the model from naming what its encoder does not see."""

    def __init__(self, model: VisionLanguageModel, tokenizer: Tokenizer, image_fit: str = "pad",
                 concepts: list[str] | None = None, concept_head: ConceptHead | None = None):
        self.model, self.tokenizer, self.image_fit = model, tokenizer, image_fit
        self.cfg = model.cfg
        self.concepts, self.concept_head = concepts, concept_head

    # --- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> "TinyVLM":
        d = resolve(path)
        meta = read_json(d / CONFIG)
        cfg = VLMConfig.from_dict(meta.get("model", {}))
        model = VisionLanguageModel(cfg)
        try:
            state = load_file(d / WEIGHTS)
        except (SafetensorError, OSError) as e:
            raise TinyVLMError(f"cannot read weights {d / WEIGHTS}: {e}") from None
        if cfg.lm_tie_weights:
            state.setdefault("decoder.head.weight", state["decoder.tok.weight"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TinyVLMError(f"{d / WEIGHTS} does not match {CONFIG}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        dev = pick_device(device)
        model.to(dev).eval()
        head = None
        if meta.get("concepts"):
            head = ConceptHead(cfg.vit_width, len(meta["concepts"]))
            try:
                head.load_state_dict(load_file(d / CONCEPT_HEAD))
            except (SafetensorError, OSError, RuntimeError) as e:
                raise TinyVLMError(f"cannot read the concept head {d / CONCEPT_HEAD}: {e}") from None
            head.to(dev).eval()
        return cls(model, Tokenizer.load(d / TOKENIZER), meta.get("image_fit", "pad"), meta.get("concepts"), head)

    def save_pretrained(self, path: str | os.PathLike, extra_files: dict[str, bytes] | None = None) -> Path:
        with atomic_dir(path, also=extra_files or ()) as tmp:
            self.write_files(tmp)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
        return Path(path)

    def write_files(self, d: Path) -> None:
        meta = {"model": asdict(self.cfg), "image_fit": self.image_fit, "format": "tinyvlm/1"}
        if self.concept_head is not None:
            meta["concepts"] = self.concepts
            save_file(cpu_state(self.concept_head), d / CONCEPT_HEAD)
        (d / CONFIG).write_text(json.dumps(meta, indent=2))
        state = cpu_state(self.model)
        if self.cfg.lm_tie_weights:
            state.pop("decoder.head.weight")
        save_file(state, d / WEIGHTS)
        self.tokenizer.save(d / TOKENIZER)

    # --- use -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: Sequence[ImageLike]) -> torch.Tensor:
        return torch.stack([preprocess(im, self.cfg.vit_image_size, self.image_fit) for im in images])

    def generate(self, prompts: Sequence[str], images: Sequence[Sequence[ImageLike]], prefixes: Sequence[str] | None = None,
                 sampling: Sampling | None = None, use_cache: bool = True) -> list[str]:
        """The general call: each prompt holds one <image> slot per image of its row. With a
        prefix, the answer starts with it and the model continues (the paper's protocol)."""
        prefixes = prefixes or [""] * len(prompts)
        ids = [self.tokenizer.encode_example(p, self.cfg.image_tokens, prefix=pre)[0] for p, pre in zip(prompts, prefixes)]
        flat = [im for row in images for im in row]
        pix = self.pixels(flat) if flat else None
        sampling = sampling or Sampling()
        banned = (self.grounding(pix, [len(row) for row in images], sampling.ground, [self.tokenizer.decode(i) for i in ids])
                  if sampling.ground else None)
        out = generate(self.model, ids, pix, sampling, use_cache, banned)
        return [self.tokenizer.decode(self.tokenizer.encode_answer(pre) + o) for pre, o in zip(prefixes, out)]

    @torch.no_grad()
    def grounding(self, pixels: torch.Tensor | None, per_row: list[int], threshold: float,
                  context: list[str] | None = None) -> Grounding:
        """What grounded decoding may not let each row write, from the concept head's reading of
        the row's pictures and the text already in the row, its prompt and prefix
        (concepts.Grounding, docs/evaluation.md#grounded-decoding)."""
        if self.concept_head is None:
            raise TinyVLMError("grounded decoding needs the model's concept head, which only a run trained with "
                               "--concept-pretrain and --freeze-encoder keeps; decode without --ground")
        probs = (self.concept_head.patch_probs(self.model.vision(pixels.to(self.device))).cpu()
                 if pixels is not None else torch.zeros(0, 0, len(self.concepts)))  # (N, P, concepts)
        rows = [r.flatten(0, 1) for r in probs.split(per_row)]  # each row's patches, over all its pictures
        return Grounding(rows, self.concepts, self.tokenizer, threshold, self.cfg.lm_vocab_size, context)

    def describe(self, images: ImageLike | Sequence[ImageLike], style: str = "short", prefix: str = "",
                 sampling: Sampling | None = None) -> str | list[str]:
        """Describe one image (-> str) or a batch (-> list). `style`: 'short' or 'long'."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if style not in ("short", "long"):
            raise TinyVLMError(f"unknown style '{style}': use 'short' or 'long'")
        s = sampling or Sampling(max_new_tokens=MAX_TOKENS[style])
        out = self.generate([describe_prompt(style)] * len(batch), [[im] for im in batch], [prefix] * len(batch), s)
        return out[0] if single else out

    def ask(self, image: ImageLike, question: str, sampling: Sampling | None = None) -> str:
        if not question.strip():
            raise TinyVLMError("the question is empty")
        return self.generate([ask_prompt(question)], [[image]], sampling=sampling or Sampling(max_new_tokens=16))[0]

    @torch.no_grad()
    def logprob(self, examples: Sequence[Example], batch_size: int = 32) -> list[float]:
        """Total log-probability (nats) of each example's target given its images and prompt:
        how much the model believes a text, for ranking a true description above a false one."""
        self.model.eval()
        collate = Collator(self.tokenizer, self.cfg, self.image_fit)
        out: list[float] = []
        for i in range(0, len(examples), batch_size):
            b = collate(list(examples[i:i + batch_size]))
            images = b["images"].to(self.device) if b["images"] is not None else None
            logits, _ = self.model(b["input_ids"].to(self.device), images)
            labels = b["labels"].to(self.device)
            token_logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out += (token_logp * (labels != IGNORE)).sum(1).tolist()
        return out
