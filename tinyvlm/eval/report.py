"""The evaluation report: a score table (model beside its baselines), plots, and a grid of sample
pictures beside what the model wrote, with each checked claim marked true or false."""
from __future__ import annotations

import html
import os
import textwrap
from pathlib import Path

from ..files import write_atomic
from ..plots import figure
from .rubric import RUBRIC

RAW = ("claim_precision", "claim_recall", "hallucination_per_thing", "hallucination_per_description",
       "attribute_accuracy", "count_accuracy", "relation_accuracy", "repetition_rate", "novelty")
CAPTIONS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def score_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per (run, setting): rubric, raw grounded figures, caption metrics, VQA, probe."""
    header = ["run", "setting"]
    rows = []
    keys = []
    for run, res in results["runs"].items():
        for setting, r in res.items():
            if setting in ("vqa", "probe"):
                continue
            row = {"run": run, "setting": setting}
            row.update({k: v for k, v in (r.get("rubric") or {}).items()})
            row.update({k: r.get("raw", {}).get(k) for k in RAW if "raw" in r})
            row.update({k: r.get("captions", {}).get(k) for k in CAPTIONS if "captions" in r})
            row["vqa"] = (res.get("vqa") or {}).get("accuracy")
            row["probe"] = (res.get("probe") or {}).get("accuracy")
            rows.append(row)
            keys += [k for k in row if k not in keys and k not in header]
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    return header + keys, [[_fmt(r.get(k)) for k in header + keys] for r in rows]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows])


def _plots(results: dict, out: Path) -> list[str]:
    made = []
    runs = results["runs"]
    settings = [s for s in runs.get("model", {}) if "rubric" in runs["model"][s] and runs["model"][s]["rubric"]]
    if settings:
        s = settings[0]
        names = [n for n in runs if s in runs[n] and runs[n][s].get("rubric")]
        fig = figure(figsize=(7, 3.2), dpi=120)
        ax = fig.subplots()
        w = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([j + i * w for j in range(len(RUBRIC))], [runs[n][s]["rubric"].get(d, 0) for d in RUBRIC], w, label=n)
        ax.set_xticks([j + w * (len(names) - 1) / 2 for j in range(len(RUBRIC))], RUBRIC)
        ax.set(ylim=(0, 10), ylabel="score / 10", title=f"rubric ({s})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rubric.png")
        made.append("rubric.png")
    for task in ("vqa", "probe"):
        names = [n for n in runs if runs[n].get(task, {}).get("by_type")]
        if not names:
            continue
        types = list(runs[names[0]][task]["by_type"])
        fig = figure(figsize=(7, 3), dpi=120)
        ax = fig.subplots()
        w = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([j + i * w for j in range(len(types))], [runs[n][task]["by_type"].get(t, 0) for t in types], w, label=n)
        ax.set_xticks([j + w * (len(names) - 1) / 2 for j in range(len(types))], types)
        ax.set(ylim=(0, 1), ylabel="accuracy", title="VQA by question type" if task == "vqa" else "probe: true vs hard negative, by swap")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{task}.png")
        made.append(f"{task}.png")
    return made


def sample_grid(samples: list[dict], out_png: Path, cols: int = 4) -> Path:
    """Pictures with the model's words under each (a PNG for READMEs and docs)."""
    from ..data.images import load_image
    n = len(samples)
    rows = (n + cols - 1) // cols
    fig = figure(figsize=(cols * 3.2, rows * 4.2), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, s in zip(axes.ravel(), samples):
        ax.imshow(load_image(s["image"]))
        ax.set_title("\n".join(textwrap.wrap(s["text"], 34)[:7]), fontsize=7.5, loc="left", y=-0.02, va="top")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png


def write_report(results: dict, out: Path) -> None:
    header, rows = score_rows(results)
    plots = _plots(results, out)
    samples = results.get("samples", [])
    if samples:
        sample_grid(samples[:8], out / "samples.png")
    md = [f"# tinyvlm evaluation\n\nmodel `{results['config']['model']}` on `{results['config']['data']}` "
          f"({results['n']} records, judge: {results['config']['judge']}, "
          f"grounded decoding: {results['config'].get('ground') or 'off'})\n", "## Scores\n", markdown_table(header, rows), ""]
    for run, res in results["runs"].items():
        for task in ("vqa", "probe"):
            if res.get(task, {}).get("by_type"):
                md.append(f"- {run} {task} by type: " + ", ".join(f"{t} {v:.2f}" for t, v in res[task]["by_type"].items()))
    if results.get("memorisation"):
        md.append("\n## Memorisation (ROUGE-L to the nearest training text)\n")
        md += [f"- {s}: mean {m['mean_rouge_l']:.3f}, max {m['max_rouge_l']:.3f}" for s, m in results["memorisation"].items()]
    md += ["", *[f"![{p}]({p})" for p in plots + (["samples.png"] if samples else [])], "\n## Samples\n"]
    for s in samples:
        md.append(f"**{Path(s['image']).name}** — {s['text']}\n")
        if s.get("claims"):
            md.append("  " + "; ".join(f"{'✓' if v == 'true' else '✗' if v == 'false' else '?'} {c}" for c, v in s["claims"]) + "\n")
    write_atomic(out / "report.md", "\n".join(md))

    colour = {"true": "#1a7f37", "false": "#cf222e"}
    cards = []
    for s in samples:
        src = html.escape(os.path.relpath(s["image"], out))
        claims = "".join(f'<li style="color:{colour.get(v, "#666")}">{html.escape(str(c))} ({v})</li>' for c, v in s.get("claims") or [])
        cards.append(f'<div class="card"><img src="{src}"><p>{html.escape(s["text"])}</p><ul>{claims}</ul></div>')
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    page = f"""<!doctype html><meta charset="utf-8"><title>tinyvlm evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}}.card img{{width:100%;image-rendering:pixelated}}
.card{{border:1px solid #ddd;padding:8px;font-size:13px}}.card ul{{padding-left:1.1em;font-size:12px}}</style>
<h1>tinyvlm evaluation</h1><p>model <code>{html.escape(results['config']['model'])}</code> on <code>{html.escape(results['config']['data'])}</code>, {results['n']} records</p>
<h2>Scores</h2>{table}{''.join(f'<img src="{p}" style="max-width:48%">' for p in plots)}<h2>Samples</h2><div class="grid">{''.join(cards)}</div>"""
    write_atomic(out / "report.html", page)
