"""Write the picture-book world to disk: images/000000.png ... and world.jsonl, one record a scene.

Scene i is made from its own RNG, seeded by (seed, i), so files are the same for any number of
workers; images are written by the workers as they go, so memory stays flat for any n.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import textwrap
from functools import partial
from pathlib import Path
from typing import Iterable

from PIL import Image, ImageDraw, ImageFont

from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..data.records import Record, iter_jsonl, write_jsonl
from .describe import describe
from .render import render
from .scene import MAX_THINGS, Scene, sample_scene

VERSION = 1


def make_scene_record(index: int, seed: int = 0, max_things: int = MAX_THINGS) -> Record:
    """Scene `index` of the world with this seed, described but not drawn (fast, for tests and text).
    `max_things` < 6 makes simpler pictures (fewer things to tell apart: an easier first lesson)."""
    rng = random.Random(f"tinyvlm-world:{seed}:{index}")
    scene = sample_scene(rng, max_things)
    words = describe(scene, rng)
    return Record(images=[f"images/{index:06d}.png"], text=words["short"][0], scene=scene.to_dict(),
                  extra={k: words[k] for k in ("short", "long", "questions", "negatives")})


def _make(index: int, seed: int, size: int, out_dir: str, max_things: int) -> Record:
    record = make_scene_record(index, seed, max_things)
    render(Scene.from_dict(record.scene), size).save(os.path.join(out_dir, record.images[0]))
    return record


def write_world(out_dir: str | os.PathLike, n: int, size: int = 64, seed: int = 0, progress: bool = True,
                workers: int | None = None, max_things: int = MAX_THINGS) -> Path:
    """Generate n scenes into out_dir; returns the path of world.jsonl."""
    check_range("n", n, 1, MAX_COUNT, integer=True, note="scenes")
    check_range("size", size, 32, 512, integer=True, note="image size, in pixels")
    check_seed("seed", seed)
    check_range("max_things", max_things, 1, MAX_THINGS, integer=True, note="more do not fit a picture")
    workers = min(os.cpu_count() or 1, 2) if workers is None else workers
    check_range("workers", workers, 1, 1024, integer=True)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps({"n": n, "size": size, "seed": seed, "max_things": max_things, "version": VERSION}, indent=1) + "\n")
    make = partial(_make, seed=seed, size=size, out_dir=str(out), max_things=max_things)
    bar = _progress(n) if progress else None
    with multiprocessing.Pool(workers) if workers > 1 else _Serial() as pool:
        records = pool.imap(make, range(n), chunksize=16)
        write_jsonl(_ticking(records, bar), out / "world.jsonl")
    if bar:
        bar.close()
    return out / "world.jsonl"


class _Serial:
    """A one-process stand-in for multiprocessing.Pool, so one code path serves both."""
    def __enter__(self): return self
    def __exit__(self, *exc): return False
    def imap(self, fn, items, chunksize=1): return map(fn, items)


def _progress(n: int):
    from tqdm import tqdm
    return tqdm(total=n, desc="world", unit="scene")


def _ticking(records: Iterable[Record], bar) -> Iterable[Record]:
    for r in records:
        if bar:
            bar.update(1)
        yield r


def contact_sheet(records_or_dir: "str | os.PathLike | Iterable[Record]", out_png: str | os.PathLike, n: int = 8,
                  cell: int = 192, cols: int = 4) -> Path:
    """A grid of the first n scenes, each with its ShortDesc under it (for the README)."""
    if isinstance(records_or_dir, (str, os.PathLike)):
        path = Path(records_or_dir)
        records_or_dir = iter_jsonl(path / "world.jsonl" if path.is_dir() else path)
    records = [r for _, r in zip(range(n), records_or_dir)]
    if not records:
        raise TinyVLMError("contact_sheet: no records to draw")
    cols = min(cols, len(records))
    text_h = cell // 2
    sheet = Image.new("RGB", (cols * cell, -(-len(records) // cols) * (cell + text_h)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for k, r in enumerate(records):
        x, y = (k % cols) * cell, (k // cols) * (cell + text_h)
        if os.path.exists(r.images[0]):
            img = Image.open(r.images[0]).convert("RGB").resize((cell - 8, cell - 8), Image.LANCZOS)
        else:  # records made by make_scene_record have no image file yet
            img = render(Scene.from_dict(r.scene), cell - 8)
        sheet.paste(img, (x + 4, y + 4))
        draw.multiline_text((x + 4, y + cell), "\n".join(textwrap.wrap(r.text, width=cell // 6)), fill="black", font=font)
    sheet.save(out_png)
    return Path(out_png)
