"""`tinyvlm eval`: run a model over an evaluation set and measure everything the set's truth allows.

- Picture-book scenes (records with a `scene`): the paper's completion protocol and free
  description, scored by the world plug-in's grounded judge; VQA accuracy by question type; the
  compositional probe (true description vs each hard negative, by likelihood).
- Captioned photos (records with `references`): BLEU/METEOR/ROUGE-L/CIDEr.
- Any images, with `judge="llm"`: the paper's rubric through an OpenAI-compatible endpoint.
- Judges are found by name, each plug-in's (tinyvlm.plugins) beside the core's (llm, captions).
  A plug-in's judge reads only the records its plug-in labels.
- Always: the memorisation check against the training text, and two baselines in the same table
  (blind: every image replaced by a blank one; nearest neighbour: the training text of the most
  similar training image), so each number has something to be compared with.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import plugins
from ..api import TinyVLM
from ..checkpoint import resolve
from ..data.batches import MAX_TOKENS, Example, ask_prompt, describe_prompt
from ..data.dataset import open_records
from ..data.images import fit_square, load_image
from ..data.records import Record
from ..errors import MAX_COUNT, TinyVLMError, check_range
from ..model.reduce import ReduceConfig
from ..generate import Sampling
from ..text import words
from ..files import write_atomic

PREFIX_WORDS = {"short": 6, "long": 18}  # the paper gives the first 6-7 (ShortDesc) or 18-20 (LongDesc) words
CORE_JUDGES = ("llm", "captions")


def judges() -> tuple[str, ...]:
    """Every judge's name: the plug-ins' (the world's "grounded"), then the core's."""
    return (*plugins.judges(), *CORE_JUDGES)


@dataclass
class EvalConfig:
    model: str
    data: str
    out: str | None = None
    judge: str = "grounded"          # grounded (the world plug-in's) | llm | captions
    n: int = 200                     # evaluation records
    styles: tuple[str, ...] = ("short",)
    train_data: str | None = None    # default: the data the model was trained on (from its run state)
    baselines: bool = True
    batch_size: int = 32
    max_questions: int = 4           # per record, for VQA
    ground: float = 0.0              # grounded decoding threshold (Sampling.ground), for every run alike
    keep_tokens: float = 1.0         # share of patch tokens the decoder reads (model/reduce.py); 1 = all
    merge: int = 0                   # tokens merged per encoder block (model/reduce.py); 0 = off
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str = "OPENAI_API_KEY"
    progress: bool = True

    def __post_init__(self):
        """Every number and style checked before the model or any data is read."""
        check_range("n", self.n, 1, MAX_COUNT, integer=True, note="records")
        check_range("batch_size", self.batch_size, 1, MAX_COUNT, integer=True)
        check_range("max_questions", self.max_questions, 0, MAX_COUNT, integer=True, note="per record, 0 = no VQA")
        check_range("ground", self.ground, 0, 1, hi_open=True, note="a probability threshold, 0 = off")
        ReduceConfig(self.keep_tokens, self.merge)  # checks both
        self.styles = tuple(self.styles)
        if not self.styles or set(self.styles) - set(MAX_TOKENS):
            raise TinyVLMError(f"unknown styles {','.join(self.styles)!r}: use {' or '.join(MAX_TOKENS)}, or both, "
                               "comma-separated")


def _labelled(plugin: plugins.Plugin, records: list[Record]) -> bool:
    return all(plugin.labels(r) for r in records)


def _check(cfg: EvalConfig, records: list[Record]):
    by_plugin = plugins.judges()
    has_refs = all(r.references for r in records)
    if cfg.judge not in judges():
        raise TinyVLMError(f"unknown judge '{cfg.judge}': choose one of {', '.join(judges())}")
    plugin = by_plugin.get(cfg.judge)
    if plugin is not None and not _labelled(plugin, records):
        hint = "--judge captions (it has reference captions) or --judge llm" if has_refs else "--judge llm"
        raise TinyVLMError(f"{cfg.data} has no {plugin.truth}, which the {cfg.judge} judge needs: use {hint}")
    if cfg.judge == "captions" and not has_refs:
        can = [j for j, p in by_plugin.items() if _labelled(p, records)]
        raise TinyVLMError(f"{cfg.data} has no reference captions, which caption metrics need: use --judge llm"
                           + "".join(f" or --judge {j}" for j in can))
    if cfg.judge == "llm" and not (cfg.llm_base_url and cfg.llm_model):
        raise TinyVLMError("the LLM judge needs --llm-base-url and --llm-model (key from $OPENAI_API_KEY or --llm-api-key-env)")


def _train_source(cfg: EvalConfig):
    path = cfg.train_data
    if path is None:
        state = resolve(cfg.model) / "state.json"
        if state.is_file():
            path = json.loads(state.read_text())["train_config"]["data"]
    return open_records(path, "train") if path and Path(path).exists() else None


def normalise_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles: 'The ball.' == 'ball'."""
    return " ".join(w for w in words(text, digits=True) if w not in ("a", "an", "the"))


class NearestNeighbour:
    """The baseline that looks but does not understand: return the text of the training image
    whose 16x16 thumbnail is closest in pixels."""

    def __init__(self, records: list[Record]):
        self.records = records
        self.feats = np.stack([self._feat(r.images[0]) for r in records])

    def _feat(self, path) -> np.ndarray:
        v = np.asarray(fit_square(load_image(path), 16), dtype=np.float32).ravel()
        return (v - v.mean()) / (v.std() + 1e-6)

    def __call__(self, image) -> Record:
        return self.records[int(((self.feats - self._feat(image)) ** 2).sum(1).argmin())]


def _blank_image(out: Path, size: int) -> str:
    path = out / "blank.png"
    Image.new("RGB", (size, size), (128, 128, 128)).save(path)
    return str(path)


def _describe(vlm: TinyVLM, images: list[str], style: str, prefixes: list[str], bs: int, ground: float) -> list[str]:
    s = Sampling(max_new_tokens=MAX_TOKENS[style], ground=ground)
    out = []
    for i in range(0, len(images), bs):
        chunk = images[i:i + bs]
        out += vlm.generate([describe_prompt(style)] * len(chunk), [[im] for im in chunk], prefixes[i:i + bs], s)
    return out


def _vqa(vlm: TinyVLM, records: list[Record], images: list[str], k: int, bs: int, ground: float) -> dict:
    items = [(im, q) for r, im in zip(records, images) for q in r.extra.get("questions", [])[:k]]
    answers = []
    for i in range(0, len(items), bs):
        chunk = items[i:i + bs]
        answers += vlm.generate([ask_prompt(q["question"]) for _, q in chunk], [[im] for im, _ in chunk],
                                sampling=Sampling(max_new_tokens=12, ground=ground))
    by_type = defaultdict(list)
    for (_, q), a in zip(items, answers):
        by_type[q["type"]].append(normalise_answer(a) == normalise_answer(str(q["answer"])))
    return _accuracy(by_type)


def _probe(vlm: TinyVLM, records: list[Record], images: list[str], bs: int) -> dict:
    pairs = [(im, neg) for r, im in zip(records, images) for neg in r.extra.get("negatives", [])]
    ex = [Example([im], describe_prompt("short"), t) for im, neg in pairs for t in (neg["true_text"], neg["text"])]
    lp = vlm.logprob(ex, bs)
    by_type = defaultdict(list)
    for j, (_, neg) in enumerate(pairs):
        by_type[neg["swap"]].append(lp[2 * j] > lp[2 * j + 1])
    return _accuracy(by_type)


def _accuracy(by_type: dict[str, list[bool]]) -> dict:
    total = [x for v in by_type.values() for x in v]
    return {"accuracy": float(np.mean(total)) if total else None, "n": len(total),
            "by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())}}


def _texts_of(record: Record) -> list[str]:
    return record.extra.get("short", []) + record.extra.get("long", []) or record.references or [record.text]


def evaluate(cfg: EvalConfig) -> dict:
    """Run every measure the data supports; write results.json and a report when `cfg.out` is set."""
    from .captions import memorisation
    records = open_records(cfg.data, "val").head(cfg.n)
    _check(cfg, records)
    vlm = TinyVLM.from_pretrained(cfg.model, keep_tokens=cfg.keep_tokens, merge=cfg.merge)
    out = Path(cfg.out) if cfg.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    world = records[0].scene is not None
    train_src = _train_source(cfg)
    train_recs = train_src.head(5000) if train_src else []
    train_texts = [t for r in train_recs for t in _texts_of(r)]

    runs = {"model": [r.images[0] for r in records]}
    if cfg.baselines:
        scratch = None if out else tempfile.TemporaryDirectory(prefix="tinyvlm-eval-")  # removed at the end
        blank = _blank_image(out or Path(scratch.name), vlm.cfg.vit_image_size)
        runs["blind"] = [blank] * len(records)
    results: dict = {"config": asdict(cfg), "n": len(records), "runs": {}}
    for run, images in runs.items():
        res: dict = {}
        for style in cfg.styles:
            refs = [r.extra[style] for r in records] if world else None  # every paraphrase of the truth
            modes = {"free": [""] * len(records)}
            if world:  # the paper's protocol: the first words of a held-out description are given
                modes["complete"] = [" ".join(ref[0].split()[:PREFIX_WORDS[style]]) for ref in refs]
            for mode, prefixes in modes.items():
                texts = _describe(vlm, images, style, prefixes, cfg.batch_size, cfg.ground)
                res[f"{style}/{mode}"] = _judge(cfg, records, texts, refs, prefixes, train_texts, images)
        if world:
            res["vqa"] = _vqa(vlm, records, images, cfg.max_questions, cfg.batch_size, cfg.ground)
            res["probe"] = _probe(vlm, records, images, cfg.batch_size)
        results["runs"][run] = res
    if cfg.baselines and train_recs:  # nearest neighbour: a training text, judged like the model's
        nn = NearestNeighbour(train_recs)
        near = [nn(r.images[0]) for r in records]
        results["runs"]["nearest"] = {
            f"{style}/free": _judge(cfg, records, [(n.extra.get(style) or [n.text])[0] for n in near],
                                    [r.extra[style] for r in records] if world else None,
                                    [""] * len(records), train_texts, [r.images[0] for r in records])
            for style in cfg.styles}
    if train_texts:  # the paper's memorisation check, on the model's free descriptions
        results["memorisation"] = {}
        for style in cfg.styles:
            mem = memorisation(results["runs"]["model"][f"{style}/free"]["texts"], train_texts)
            results["memorisation"][style] = {"mean_rouge_l": float(np.mean([m["rouge_l"] for m in mem])),
                                              "max_rouge_l": float(max(m["rouge_l"] for m in mem)),
                                              "examples": mem[:5]}
    results["samples"] = [{"image": r.images[0], "text": t, "reference": (r.extra.get(cfg.styles[0]) or r.references or [r.text])[0],
                           "claims": item.get("claims")}
                          for r, t, item in zip(records[:12], results["runs"]["model"][f"{cfg.styles[0]}/free"]["texts"],
                                                results["runs"]["model"][f"{cfg.styles[0]}/free"].get("items") or [{}] * 12)]
    if out:
        write_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
        from .report import write_report
        write_report(results, out)
    if cfg.baselines and scratch is not None:
        scratch.cleanup()
    return results


def _judge(cfg: EvalConfig, records, texts, refs, prefixes, train_texts, images) -> dict:
    """Score one set of outputs with the configured judge (plus caption metrics when references exist)."""
    res: dict = {}
    plugin = plugins.judges().get(cfg.judge)
    if plugin is not None:
        res = plugin.judges[cfg.judge](records, texts, refs, prefixes, train_texts)
    elif cfg.judge == "llm":
        from ..llm import ChatClient
        from .llm_judge import judge_llm
        client = ChatClient(cfg.llm_base_url, cfg.llm_model, cfg.llm_api_key_env)
        items = [{"id": str(i), "image": im, "text": t, "prompt": (prefixes or [""] * len(texts))[i]}
                 for i, (im, t) in enumerate(zip(images, texts))]
        j = judge_llm(items, client, progress=cfg.progress)
        res = {"rubric": j["mean"], "n_scored": j["n_scored"], "n_failed": j["n_failed"], "items": j["items"]}
    if records[0].references:
        from .captions import caption_metrics
        res["captions"] = caption_metrics({str(i): t for i, t in enumerate(texts)},
                                          {str(i): r.references for i, r in enumerate(records)})
    res["texts"] = texts
    return res
