"""`tinyvlm eval --suite icl`: in-context learning, by VL-ICL Bench's protocol (Zong et al., ICLR
2025; ys-zong/VL-ICL I2T_inference.py, evals/eval.py), at each shot count:

- each shot is formatted as picture(s), question, answer (one user and one assistant turn);
- decoding is greedy, with at most 15 new tokens;
- the prediction is cut at the first newline, else after the first period;
- numeric answers take the first integer of the prediction; scoring is exact match (case aside).

Beside the model, in the same table: the model with the support answers shuffled among the support
shots (if it reads its shots, this falls to chance), and the majority answer (the support's most
common answer; at 0 shots, the most common query answer of the task).

Episodes come from `tinyvlm data icl` (the query after the first k of each episode's shots) or from
a VL-ICL task folder (data/vlicl.py: k shots drawn as VL-ICL draws them).
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..api import TinyVLM
from ..data.dataset import open_records
from ..data.episodes import Episode, is_episode
from ..data.vlicl import is_vlicl, read_vlicl
from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..files import write_atomic
from ..generate import Sampling

SHOTS = (0, 1, 2, 4, 8)
MAX_NEW_TOKENS = 15  # VL-ICL's --max-new-tokens
CHANCE = {"binding": 0.5, "matching": 0.5, "open_mi": 0.5, "matching_mi": 0.5}  # 2-way tasks


@dataclass
class ICLEvalConfig:
    model: str
    data: str                       # episodes (`tinyvlm data icl`) or a VL-ICL task folder
    out: str | None = None
    shots: tuple[int, ...] = SHOTS
    n: int = 200                    # episodes (queries), at most
    baselines: bool = True          # shuffled support answers
    batch_size: int = 16
    seed: int = 0                   # the shuffled baseline's permutations, VL-ICL's shot draws
    device: str = "cpu"

    def __post_init__(self):
        check_range("n", self.n, 1, MAX_COUNT, integer=True, note="episodes")
        check_range("batch_size", self.batch_size, 1, MAX_COUNT, integer=True)
        check_seed("seed", self.seed)
        self.shots = tuple(self.shots)
        if not self.shots:
            raise TinyVLMError("give at least one shot count, e.g. --shots 0,1,2,4,8")
        for k in self.shots:
            check_range("shots", k, 0, 64, integer=True, note="support shots")


def cut(prediction: str) -> str:
    """VL-ICL's truncation: the text up to the first newline, else up to the first period."""
    p = prediction.strip()
    i = p.find("\n")
    if i <= 0:
        i = p.find(".")
    return p[:i] if i > 0 else p


def is_numeric(answer: str) -> bool:
    return re.fullmatch(r"-?\d+", answer.strip()) is not None


def correct(prediction: str, answer: str) -> bool:
    """Exact match after the cut; a numeric answer is compared with the prediction's first integer."""
    p = cut(prediction)
    if is_numeric(answer):
        m = re.search(r"-?\d+", p)
        p = m.group() if m else ""
    return p.strip().lower() == answer.strip().lower()


def load_episodes(data: str, k: int, n: int, seed: int) -> list[Episode]:
    """The evaluation's episodes at k shots: a VL-ICL task's queries, or our episodes cut to k."""
    if is_vlicl(data):
        return read_vlicl(data).episodes(k, seed)[:n]
    records = [r for r in open_records(data).head(MAX_COUNT) if is_episode(r)][:n]
    if not records:
        raise TinyVLMError(f"{data}: no in-context episodes (make them with `tinyvlm data icl`, or point at a "
                           "VL-ICL task folder holding query.json and support.json)")
    episodes = [Episode.from_record(r) for r in records]
    short = min(len(e.support) for e in episodes)
    if k > short:
        raise TinyVLMError(f"{data}: {k} shots asked, but some episodes hold only {short} support shots "
                           "(make them with --shots 8 or more)")
    return [e.take(k) for e in episodes]


def predict(vlm: TinyVLM, episodes: list[Episode], batch_size: int) -> list[str]:
    """Greedy answers to each episode's query after its shots."""
    sampling = Sampling(max_new_tokens=MAX_NEW_TOKENS)
    out: list[str] = []
    for i in range(0, len(episodes), batch_size):
        batch = episodes[i:i + batch_size]
        convs = [e.turns()[:-1] for e in batch]
        out += vlm.answer_turns(convs, [e.images() for e in batch], sampling)
    return out


def majority(e: Episode, fallback: str) -> str:
    """The support's most common answer (first seen wins a tie); `fallback` without support."""
    if not e.support:
        return fallback
    counts = Counter(s.answer for s in e.support)
    top = max(counts.values())
    return next(s.answer for s in e.support if counts[s.answer] == top)


def evaluate_icl(cfg: ICLEvalConfig) -> dict:
    """Accuracy per task (family) per shot count for the model, the shuffled-support model and the
    majority answer; written to cfg.out as results.json, report.md and icl.png."""
    for k in cfg.shots:  # every shot count checked against the data before the model spends time
        load_episodes(cfg.data, k, cfg.n, cfg.seed)
    vlm = TinyVLM.from_pretrained(cfg.model, device=cfg.device)
    table: dict = defaultdict(lambda: {"model": {}, "shuffled": {}, "majority": {}, "n": 0})
    samples = []
    for k in cfg.shots:
        episodes = load_episodes(cfg.data, k, cfg.n, cfg.seed)
        runs = {"model": predict(vlm, episodes, cfg.batch_size)}
        if cfg.baselines and k >= 2:
            rng = random.Random(f"shuffle:{cfg.seed}:{k}")
            runs["shuffled"] = predict(vlm, [e.shuffled(rng) for e in episodes], cfg.batch_size)
        by_family: dict[str, list[int]] = defaultdict(list)
        for j, e in enumerate(episodes):
            by_family[e.family].append(j)
        for family, idx in sorted(by_family.items()):
            row = table[family]
            row["n"] = len(idx)
            fallback = Counter(episodes[j].query.answer for j in idx).most_common(1)[0][0]
            for name, preds in runs.items():
                row[name][k] = sum(correct(preds[j], episodes[j].query.answer) for j in idx) / len(idx)
            row["majority"][k] = sum(majority(episodes[j], fallback) == episodes[j].query.answer for j in idx) / len(idx)
            row["chance"] = CHANCE.get(family)
            for j in idx[:2]:
                samples.append({"family": family, "shots": k, "query": episodes[j].query.question,
                                "answer": episodes[j].query.answer, "prediction": runs["model"][j],
                                "support": [s.answer for s in episodes[j].support]})
    results = {"model": str(cfg.model), "data": str(cfg.data), "shots": list(cfg.shots),
               "protocol": "VL-ICL: greedy, <= 15 new tokens, cut at the first newline or period, numeric "
                           "answers by their first integer, exact match",
               "tasks": {f: dict(v) for f, v in table.items()}, "samples": samples}
    if cfg.out:
        write_icl_report(results, Path(cfg.out))
    return results


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    shots = results["shots"]
    header = ["task", "run", *[f"{k}-shot" for k in shots]]
    rows = []
    for family, row in results["tasks"].items():
        for run in ("model", "shuffled", "majority"):
            vals = row.get(run, {})
            if vals:
                rows.append([family, run, *[f"{vals[k]:.3f}" if k in vals else "–" for k in shots]])
        if row.get("chance") is not None:
            rows.append([family, "chance", *[f"{row['chance']:.3f}"] * len(shots)])
    return header, rows


def markdown(results: dict) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_icl_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    serial = json.loads(json.dumps(results, default=str))  # int shot keys become strings in JSON
    write_atomic(out / "results.json", json.dumps(serial, indent=2) + "\n")
    plot = plot_icl(results, out / "icl.png")
    n = {f: r["n"] for f, r in results["tasks"].items()}
    text = ["# In-context learning", "", f"model: `{results['model']}`  ", f"episodes: `{results['data']}` "
            f"({', '.join(f'{f}: {v}' for f, v in n.items())})  ", f"protocol: {results['protocol']}", "",
            markdown(results), ""]
    if plot:
        text += ["![accuracy against shots](icl.png)", ""]
    text += ["## Samples", ""] + [f"- {s['family']}, {s['shots']} shots: support {s['support']} -> "
                                  f"{s['prediction']!r} (truth {s['answer']!r})" for s in results["samples"]]
    write_atomic(out / "report.md", "\n".join(text) + "\n")


def plot_icl(results: dict, out_png: Path) -> Path | None:
    """Accuracy against shots, one colour a task: the model solid, shuffled support dashed."""
    from ..plots import figure
    fig = figure(figsize=(6, 3.8), dpi=120)
    ax = fig.subplots()
    for i, (family, row) in enumerate(results["tasks"].items()):
        colour = f"C{i}"
        for run, style in (("model", "o-"), ("shuffled", "x--")):
            pts = sorted(row.get(run, {}).items())
            if pts:
                ax.plot(*zip(*pts), style, color=colour, label=f"{family}" + (" (shuffled)" if run == "shuffled" else ""))
        if row.get("chance") is not None:
            ax.axhline(row["chance"], color=colour, lw=0.6, alpha=0.5)
    ax.set(xlabel="shots", ylabel="accuracy", ylim=(-0.02, 1.02), xticks=results["shots"],
           title="in-context learning (VL-ICL protocol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png
