"""`TinyVLM`: a trained model with its tokenizer, loaded from and saved to a directory, with the
calls a user wants — describe a picture, complete a description, answer a question, hold a
conversation over several pictures — each as a whole answer or streamed token by token."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import plugins
from .card import CARD, TRAINING, model_card
from .checkpoint import CONCEPT_HEAD, CONFIG, TOKENIZER, WEIGHTS, atomic_dir, cpu_state, read_json, resolve
from .concepts import ConceptHead, Grounding
from .config import VLMConfig
from .data.batches import MAX_TOKENS, Collator, Example, ask_prompt, describe_prompt
from .data.images import preprocess
from .errors import TinyVLMError, TrainedTaskWarning, check_range
from .generate import Backend, Constraint, Sampling, backend_device, stream
from .messages import parse_messages
from .model import IGNORE, VisionLanguageModel
from .model.reduce import ReduceConfig
from .tokenizer import EOS_ID, IMAGE_SLOT, Tokenizer

FORMAT = "tinyvlm/2"  # the chat template and rotary positions; tinyvlm/1 models need retraining
BACKENDS = ("torch", "onnxruntime")  # what runs the model: PyTorch, or its ONNX export (tinyvlm/export/)

ImageLike = "str | os.PathLike | Image.Image | torch.Tensor"  # a tensor: pixels already preprocessed


class Delta(NamedTuple):
    """A piece of a row's text as it streams: the text it adds (possibly empty while a character's
    bytes are incomplete), the token's id and log-probability (nats), and, on the row's last piece,
    why it ended: 'stop' (the model ended its turn) or 'length' (max_new_tokens or the context)."""
    row: int
    text: str
    token: int
    logprob: float
    finish: str | None = None


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
    `Sampling(ground=p)` keep the model from naming what its encoder does not see.
    `concept_plugin` names the plug-in that labelled the concepts (tinyvlm.plugins), whose
    grounding then applies; None when no plug-in did (caption words), or to find it from them.
    `model` is the PyTorch model, or any decoding Backend (generate.py): an ONNX export run by
    onnxruntime describes, asks and chats the same way, through the same decoding loop."""

    def __init__(self, model: VisionLanguageModel | Backend, tokenizer: Tokenizer, image_fit: str = "pad",
                 concepts: list[str] | None = None, concept_head: ConceptHead | None = None,
                 concept_plugin: str | None = None):
        self.model, self.tokenizer, self.image_fit = model, tokenizer, image_fit
        self.cfg = model.cfg
        self.concepts, self.concept_head, self.concept_plugin = concepts, concept_head, concept_plugin
        self.tasks: tuple[str, ...] | None = None  # what its training taught (learned_tasks); None: not known
        self.training: dict | None = None  # the TrainConfig that made it (training.json); None: not known
        self.figures: dict[str, float] = {}  # what its training measured, for the model card
        self.source: Path | None = None  # the folder it was loaded from (an explainer lives beside it)

    # --- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", keep_tokens: float = 1.0,
                        merge: int = 0, backend: str = "torch") -> "TinyVLM":
        """Load a saved model. `keep_tokens` (a share, 1 = all) and `merge` (tokens per encoder
        block, 0 = off) spend fewer visual tokens without retraining (model/reduce.py); they are
        kept on the loaded model, not in its saved config. `backend` "onnxruntime" runs an ONNX
        export (`tinyvlm export`), or exports a model folder on the fly (tinyvlm/export/).
        Config fields this tinyvlm does not know warn (UnknownConfigWarning) and are ignored.
        Nothing is ever fetched: `path` is a local folder."""
        if backend not in BACKENDS:
            raise TinyVLMError(f"unknown backend '{backend}': use {' or '.join(BACKENDS)}")
        reduce = ReduceConfig(keep_tokens, merge)  # a bad setting fails before the weights are read
        if backend == "onnxruntime":
            if reduce.active:
                raise TinyVLMError("the ONNX export reads every visual token: --keep-tokens and --merge need "
                                   "the torch backend")
            from .export.runtime import load_onnx
            return load_onnx(path)
        if (Path(path) / CONFIG).is_file() and "export" in read_json(Path(path) / CONFIG):
            raise TinyVLMError(f"{path} is an ONNX export: run it with the onnxruntime backend "
                               "(--backend onnxruntime), or load the model folder it was exported from")
        d = resolve(path)
        meta = read_json(d / CONFIG)
        if meta.get("format") != FORMAT:
            raise TinyVLMError(f"{d} holds a {meta.get('format', 'unknown')} model; this tinyvlm reads {FORMAT} "
                               "(the chat template and rotary positions): retrain it with `tinyvlm train`")
        cfg = VLMConfig.from_dict(meta.get("model", {}), strict=False)
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
        model.reduce = reduce
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
        # a model saved before plug-ins names none: its concepts say (scene concepts: the world's)
        plugin = meta.get("concept_plugin") or (plugins.labeller(meta["concepts"]) if head is not None else None)
        vlm = cls(model, Tokenizer.load(d / TOKENIZER), meta.get("image_fit", "pad"), meta.get("concepts"), head, plugin)
        vlm.tasks = tuple(meta["tasks"]) if meta.get("tasks") else None
        vlm.figures = dict(meta.get("figures") or {})
        vlm.training = read_json(d / TRAINING) if (d / TRAINING).is_file() else None
        vlm.source = Path(path)
        return vlm

    def save_pretrained(self, path: str | os.PathLike, extra_files: dict[str, bytes] | None = None) -> Path:
        with atomic_dir(path, also=extra_files or ()) as tmp:
            self.write_files(tmp)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
        return Path(path)

    def write_files(self, d: Path) -> None:
        """config.json, the weights, tokenizer.json, the model card (README.md) and, when known, the
        training config (training.json) and concept head."""
        if not isinstance(self.model, VisionLanguageModel):
            raise TinyVLMError("only a PyTorch model can be saved; an ONNX export is already a folder of its own")
        if self.concept_head is not None:
            save_file(cpu_state(self.concept_head), d / CONCEPT_HEAD)
        (d / CONFIG).write_text(json.dumps(self.meta(), indent=2))
        state = cpu_state(self.model)
        if self.cfg.lm_tie_weights:
            state.pop("decoder.head.weight")
        save_file(state, d / WEIGHTS)
        self.tokenizer.save(d / TOKENIZER)
        if self.training is not None:
            (d / TRAINING).write_text(json.dumps(self.training, indent=2))
        (d / CARD).write_text(self.card())

    def meta(self) -> dict:
        """What config.json holds: the model's config and what tinyvlm needs to use it."""
        meta = {"model": asdict(self.cfg), "image_fit": self.image_fit, "format": FORMAT}
        if self.tasks:
            meta["tasks"] = list(self.tasks)
        if self.figures:
            meta["figures"] = self.figures
        if self.concept_head is not None:
            meta["concepts"] = self.concepts
            plugin = self.labelled_by()
            if plugin:
                meta["concept_plugin"] = plugin
        return meta

    def card(self, name: str | None = None, exported: str | None = None) -> str:
        """The model card (card.py) for this model's folder."""
        model = self.model if isinstance(self.model, VisionLanguageModel) else VisionLanguageModel(self.cfg)
        return model_card(self.cfg, model.num_params(), name=name or "tinyvlm model", tasks=self.tasks,
                          training=self.training, figures=self.figures,
                          concepts=len(self.concepts or ()) if self.concept_head is not None else 0,
                          exported=exported)

    def labelled_by(self) -> str | None:
        """The plug-in that labelled the concept head's concepts: as named, or found from the
        concepts themselves (a run sets the head after the model is built; old models name none)."""
        return self.concept_plugin or plugins.labeller(self.concepts)

    # --- use -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return backend_device(self.model)

    def pixels(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Pictures -> model input (N, 3, S, S). A (3, S, S) tensor is taken as already preprocessed
        (as this returns): the server prepares pictures on its request threads, off the decoding one."""
        size = self.cfg.vit_image_size
        out = []
        for im in images:
            if isinstance(im, torch.Tensor):
                if tuple(im.shape) != (3, size, size):
                    raise TinyVLMError(f"a picture given as a tensor must be preprocessed pixels (3, {size}, {size}), "
                                       f"not {tuple(im.shape)}")
                out.append(im)
            else:
                out.append(preprocess(im, size, self.image_fit))
        return torch.stack(out)

    def _prepare(self, conversations: Sequence[Sequence[tuple[str, str]]], images: Sequence[Sequence[ImageLike]],
                 prefixes: Sequence[str] | None, sampling: Sampling | None, constraint: Constraint | None):
        """Token ids, pixels and the constraint for a batch of conversations (each ending on a user
        turn, holding one <image> slot per picture of its row)."""
        if len(images) != len(conversations):
            raise TinyVLMError(f"{len(conversations)} prompt(s) but {len(images)} rows of pictures")
        prefixes = list(prefixes) if prefixes is not None else [""] * len(conversations)
        ids = []
        for row, (turns, pics, pre) in enumerate(zip(conversations, images, prefixes)):
            slots = sum(text.count(IMAGE_SLOT) for role, text in turns if role == "user")
            if slots != len(pics):
                raise TinyVLMError(f"row {row}: {len(pics)} picture(s) but {slots} {IMAGE_SLOT} slot(s) in its prompt")
            ids.append(self.tokenizer.encode_conversation(turns, self.model.image_token_counts(len(pics)), pre).ids)
            self._check_fits(row, ids[-1], len(pics))
        flat = [im for row in images for im in row]
        pix = self.pixels(flat) if flat else None
        sampling = sampling or Sampling()
        if sampling.ground and constraint is None:
            context = [self.tokenizer.decode(row) for row in ids]  # what each row says before it writes
            constraint = self.grounding(pix, [len(row) for row in images], sampling.ground, context)
        return ids, pix, prefixes, sampling, constraint

    def _check_fits(self, row: int, ids: list[int], n_pictures: int) -> None:
        """A prompt longer than the context is refused with how many of its pictures would fit."""
        limit = self.cfg.lm_max_len - 1  # room for one new token at least
        if len(ids) <= limit:
            return
        per = self.model.image_token_counts(1)[0] + 2  # a picture's tokens and its two markers
        text = len(ids) - n_pictures * per
        fit = max(0, (limit - text) // per)
        raise TinyVLMError(f"{'' if row == 0 else f'row {row}: '}{n_pictures} picture(s) ({per} tokens each) and "
                           f"{text} text tokens make {len(ids)} tokens, more than the model's context of "
                           f"{self.cfg.lm_max_len} (lm_max_len): at most {fit} picture(s) fit with this text")

    def stream_chat(self, conversations: Sequence[Sequence[tuple[str, str]]], images: Sequence[Sequence[ImageLike]],
                    prefixes: Sequence[str] | None = None, sampling: Sampling | None = None,
                    constraint: Constraint | None = None) -> Iterator[Delta]:
        """The one streaming call everything else builds on: continue each conversation ((role,
        text) turns ending on a user turn; <image> slots for its row's pictures) after its prefix,
        yielding each row's text as it is decoded. `constraint` (generate.py) bans tokens per row;
        `Sampling(ground=p)` makes one from the concept head."""
        ids, pix, prefixes, sampling, constraint = self._prepare(conversations, images, prefixes, sampling, constraint)
        written: list[list[int]] = [self.tokenizer.encode_text(pre) for pre in prefixes]
        shown = [self.tokenizer.decode(w) for w in written]
        for tok in stream(self.model, ids, pix, sampling, constraint=constraint):
            row = tok.row
            if tok.id == EOS_ID:
                yield Delta(row, "", tok.id, tok.logprob, tok.finish)
                continue
            written[row].append(tok.id)
            text = self.tokenizer.decode(written[row])
            if text.endswith("\ufffd") and tok.finish is None:  # a character's bytes are not all there yet
                yield Delta(row, "", tok.id, tok.logprob)
                continue
            piece = text[len(shown[row]):] if text.startswith(shown[row]) else text
            shown[row] = text
            yield Delta(row, piece, tok.id, tok.logprob, tok.finish)

    def generate(self, prompts: Sequence[str], images: Sequence[Sequence[ImageLike]], prefixes: Sequence[str] | None = None,
                 sampling: Sampling | None = None, constraint: Constraint | None = None) -> list[str]:
        """The general call: each prompt holds one <image> slot per image of its row. With a
        prefix, the answer starts with it and the model continues (the paper's protocol)."""
        return self._collect([[("user", p)] for p in prompts], images, prefixes, sampling, constraint)

    def _collect(self, conversations, images, prefixes=None, sampling=None, constraint=None) -> list[str]:
        prefixes = list(prefixes) if prefixes is not None else [""] * len(conversations)
        ids: list[list[int]] = [self.tokenizer.encode_text(pre) for pre in prefixes]
        for d in self.stream_chat(conversations, images, prefixes, sampling, constraint):
            if d.token != EOS_ID:
                ids[d.row].append(d.token)
        return [self.tokenizer.decode(row) for row in ids]

    def answer_turns(self, conversations: Sequence[Sequence[tuple[str, str]]], images: Sequence[Sequence[ImageLike]],
                     sampling: Sampling | None = None) -> list[str]:
        """Answer a batch of conversations ((role, text) turns ending on a user turn, one <image>
        slot per picture of the row): `chat` for many at once, e.g. in-context episodes."""
        return self._collect(conversations, images, sampling=sampling)

    def chat(self, messages: list[dict], sampling: Sampling | None = None, stream: bool = False) -> str | Iterator[str]:
        """Answer an OpenAI-style conversation (messages.py: text and image_url parts, data URLs or
        paths, pictures anywhere in user turns), ending on a user message. Returns the reply, or
        with `stream` an iterator of its text pieces."""
        turns, pictures = parse_messages(messages)
        sampling = sampling or Sampling(max_new_tokens=MAX_TOKENS["long"])
        if not stream:
            return self._collect([turns], [pictures], sampling=sampling)[0]
        return (d.text for d in self.stream_chat([turns], [pictures], sampling=sampling) if d.text)

    @torch.no_grad()
    def grounding(self, pixels: torch.Tensor | None, per_row: list[int], threshold: float,
                  context: list[str] | None = None) -> Grounding:
        """What grounded decoding may not let each row write, from the concept head's reading of
        the row's pictures and the text already in the row, its prompt and prefix: a decoding
        constraint, built by the plug-in that labelled the concepts, or the core's
        concepts.Grounding when none did (docs/evaluation.md#grounded-decoding)."""
        self._need_torch("grounded decoding")
        if self.concept_head is None:
            raise TinyVLMError("grounded decoding needs the model's concept head, which only a run trained with "
                               "--concept-pretrain and --freeze-encoder keeps; decode without --ground")
        probs = (self.concept_head.patch_probs(self.model.vision(pixels.to(self.device))).cpu()
                 if pixels is not None else torch.zeros(0, 0, len(self.concepts)))  # (N, P, concepts)
        rows = [r.flatten(0, 1) for r in probs.split(per_row)]  # each row's patches, over all its pictures
        name = self.labelled_by()
        make = plugins.get(name).grounding if name else Grounding
        return make(rows, self.concepts, self.tokenizer, threshold, self.cfg.lm_vocab_size, context)

    def describe(self, images: ImageLike | Sequence[ImageLike], style: str = "short", prefix: str = "",
                 sampling: Sampling | None = None) -> str | list[str]:
        """Describe one image (-> str) or a batch (-> list). `style`: 'short' or 'long'."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if style not in ("short", "long"):
            raise TinyVLMError(f"unknown style '{style}': use 'short' or 'long'")
        self._check_trained(style, f"{'ShortDesc' if style == 'short' else 'LongDesc'} ('{style}')")
        s = sampling or Sampling(max_new_tokens=MAX_TOKENS[style])
        out = self.generate([describe_prompt(style)] * len(batch), [[im] for im in batch], [prefix] * len(batch), s)
        return out[0] if single else out

    def ask(self, image: ImageLike, question: str, sampling: Sampling | None = None,
            shots: Sequence[tuple[ImageLike, str, str]] = ()) -> str:
        """Answer a question about a picture; `shots`: (picture, question, answer) examples shown
        first, one exchange each, for the model to learn the task from in context (docs/icl.md)."""
        if not question.strip():
            raise TinyVLMError("the question is empty")
        turns, pictures = [], []
        for k, shot in enumerate(shots):
            if len(shot) != 3 or not all(isinstance(x, str) and x.strip() for x in shot[1:]):
                raise TinyVLMError(f"shot {k + 1} must be (picture, question, answer), the last two non-empty text")
            turns += [("user", ask_prompt(shot[1])), ("assistant", shot[2].strip())]
            pictures.append(shot[0])
        if not shots:
            self._check_trained("qa", "questions ('qa')")
        turns.append(("user", ask_prompt(question)))
        return self._collect([turns], [pictures + [image]], sampling=sampling or Sampling(max_new_tokens=16))[0]

    def _need_torch(self, what: str) -> None:
        if not isinstance(self.model, VisionLanguageModel):
            raise TinyVLMError(f"{what} needs the PyTorch model (the ONNX export holds only the decoding graphs): "
                               "use the torch backend")

    def _check_trained(self, task: str, what: str) -> None:
        """Warn (one line) when the model's training never taught `task`: its text will show it."""
        if self.tasks and task not in self.tasks:
            warnings.warn(f"this model was never trained on {what}; it was trained on {', '.join(self.tasks)}, "
                          "so expect text unlike what was asked", TrainedTaskWarning, stacklevel=3)

    def explain(self, image: ImageLike, text: str | None = None, method: str = "rollout", layer: int | None = None,
                explainer=None):
        """Why the model says each content word of `text` (default: its own description of the
        picture): a tinyvlm.explain.Explanation holding, per word, a map of shape (grid_h, grid_w)
        over the picture's patches, in the method's units (`.units`): 'devil' (log-probability,
        nats, of the word from one location's feature of encoder `layer`; needs a trained
        explainer), 'gradient' (gradient x input, nats), 'rollout' (attention share) or 'concept'
        (the concept head's probability). `.in_picture(map)` puts a map on the original picture's
        pixels, letterbox removed."""
        from .explain import explain
        return explain(self, image, text, method, layer, explainer)

    @torch.no_grad()
    def logprob(self, examples: Sequence[Example], batch_size: int = 32) -> list[float]:
        """Total log-probability (nats) of each example's assistant text (its target, and any
        assistant turns in its history) given its images and the rest: how much the model believes
        a text, for ranking a true description above a false one. An example longer than the
        context raises TinyVLMError rather than score a cut text."""
        check_range("batch_size", batch_size, 1, integer=True)
        self._need_torch("scoring texts (logprob)")
        self.model.eval()
        collate = Collator(self.tokenizer, self.cfg, self.image_fit, truncate=False,
                           image_tokens=self.model.image_token_counts(1)[0])
        out: list[float] = []
        for i in range(0, len(examples), batch_size):
            b = collate(list(examples[i:i + batch_size]))
            images = b["images"].to(self.device) if b["images"] is not None else None
            logits, _ = self.model(b["input_ids"].to(self.device), images)
            labels = b["labels"].to(self.device)
            token_logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            out += (token_logp * (labels != IGNORE)).sum(1).tolist()
        return out
