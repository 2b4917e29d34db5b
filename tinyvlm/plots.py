"""Plots written next to results.

Each plot is drawn on its own matplotlib.figure.Figure and saved straight to a file. There is no
pyplot and no backend switch, so a user's backend and open figures stay as they were. matplotlib
is imported only when a plot is drawn, so `import tinyvlm` stays light.
"""
from __future__ import annotations

import json
from pathlib import Path


def figure(**kwargs):
    """A new matplotlib Figure, not registered with pyplot (kwargs: figsize, dpi ...)."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def plot_loss(metrics_jsonl: str | Path, out_png: str | Path) -> Path | None:
    """Training and validation loss against step, from a run's metrics.jsonl."""
    rows = [json.loads(l) for l in Path(metrics_jsonl).read_text().splitlines() if l.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig = figure(figsize=(6, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", ms=3)
    ax.set(xlabel="step", ylabel="loss (nats/token)", yscale="log", title="tinyvlm training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    return Path(out_png)
