"""Shared fixtures: a tiny captioned dataset the tests make themselves (no downloads)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle")


def make_shapes_dataset(root: Path, n: int = 24, size: int = 32, seed: int = 0) -> Path:
    """n pictures of one coloured shape, captioned 'a <colour> <shape> on a white page'."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 2]
        im = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(im)
        m = rng.randint(2, 6)
        box = (m, m, size - m, size - m)
        (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
        path = f"images/{i:03d}.png"
        im.save(root / path)
        lines.append(json.dumps({"image": path, "text": f"a {colour} {shape} on a white page."}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes_dataset(tmp_path / "shapes")


def interrupt_training(monkeypatch, cfg, at):
    """Run train(cfg) and stop it like Ctrl-C when it logs a row for which at(row) is true; the
    checkpoints it saved before then are what a resume starts from."""
    from tinyvlm.train import Trainer, train
    real_log = Trainer._log

    def crash(self, row):
        if at(row):
            raise KeyboardInterrupt
        real_log(self, row)

    monkeypatch.setattr(Trainer, "_log", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(Trainer, "_log", real_log)
