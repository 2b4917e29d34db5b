"""Import a dataset in any supported format into the sharded layout training streams from.

    out_dir/images/<content hash>.<ext>     every usable image once, original bytes
    out_dir/train/shard-*.jsonl, out_dir/val/shard-*.jsonl
    out_dir/import.json                     counts and every skipped entry with its reason

Every image is decoded once (`load_image`) so training never meets a broken file; exact duplicates
are dropped; the train/val split is by image, so no picture is seen in both.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from ..errors import TinyVLMError
from .dataset import pick_validation, split_key, write_shards
from .images import load_image
from .readers import ImportReport, guess_format, read_any
from .records import Record, iter_jsonl, write_jsonl


def import_dataset(src: str | os.PathLike, fmt: str, out_dir: str | os.PathLike,
                   val_fraction: float = 0.1, seed: int = 0, shard_size: int = 5000,
                   progress: bool = True, image_dir: str | os.PathLike | None = None) -> ImportReport:
    """Read `src` (format `fmt`, or "auto"), validate, dedupe, split by image and write `out_dir`.
    `image_dir` overrides where coco/csv captions look for their images. Returns the report;
    with `progress`, shows a progress bar and prints the summary to stderr."""
    if not 0 <= val_fraction < 1:
        raise TinyVLMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fmt = guess_format(src) if fmt == "auto" else fmt  # import.json records the format actually used
    out = Path(out_dir).resolve()  # absolute, so write_jsonl stores paths relative to each shard
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    staged, extract_dir = out / "staged.jsonl.tmp", out / "_extract"
    report, split_keys = ImportReport(), set()
    try:
        records = read_any(src, fmt, report, extract_dir=extract_dir, image_dir=image_dir)
        bar = tqdm(records, desc="importing", unit=" records", disable=not progress)
        # Stage validated records on disk, so the split can be exact without holding them in memory.
        write_jsonl(_validated(bar, images_dir, report, split_keys), staged, root=out)
        if report.records == 0:
            first = f" (first problem: {report.problems[0]})" if report.problems else ""
            raise TinyVLMError(f"no usable records in {src}{first}")
        val_keys = pick_validation(split_keys, val_fraction, seed)

        def split(name: str) -> Iterator[Record]:
            return (r for r in iter_jsonl(staged) if (split_key(r) in val_keys) == (name == "val"))

        report.train = write_shards(split("train"), out, "train", shard_size)
        if val_keys:  # no val/ folder at all when nothing is held out, so training makes its own split
            report.val = write_shards(split("val"), out, "val", shard_size)
    finally:
        staged.unlink(missing_ok=True)
        shutil.rmtree(extract_dir, ignore_errors=True)
    info = {"source": str(src), "format": fmt, "val_fraction": val_fraction, "seed": seed}
    (out / "import.json").write_text(json.dumps(info | report.to_json(), indent=2, ensure_ascii=False))
    if progress:
        print(report.summary(), file=sys.stderr)
    return report


def _validated(records: Iterable[Record], images_dir: Path, report: ImportReport,
               split_keys: set[str]) -> Iterator[Record]:
    """Records whose images all decode, pointing at their copies in `images_dir`; unreadable images
    and exact duplicates are counted, not written."""
    checked: dict[str, str | TinyVLMError] = {}  # source path -> content hash, or why it is unusable
    stored: dict[str, Path] = {}  # content hash -> copy in images_dir (one file per distinct image)
    seen: set[bytes] = set()
    for r in records:
        try:
            hashes = [_check(p, checked) for p in r.images]
        except TinyVLMError as e:
            report.problems.append(f"skipped: {e}")
            continue
        key = hashlib.sha1(repr((hashes, r.prompt, r.text)).encode()).digest()  # 20 bytes, not the text
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        for h, p in zip(hashes, r.images):
            if h not in stored:
                stored[h] = images_dir / (h + Path(p).suffix.lower())
                if not stored[h].exists():
                    shutil.copyfile(p, stored[h])
        r = replace(r, images=[str(stored[h]) for h in hashes])
        split_keys.add(split_key(r))
        report.records += 1
        report.captions += len(r.references or [r.text])
        report.images = len(stored)
        yield r


def _check(path: str, checked: dict[str, str | TinyVLMError]) -> str:
    """Decode the image once per path and return its content hash; raise (again) if unusable."""
    if path not in checked:
        try:
            load_image(path)
            checked[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:24]
        except TinyVLMError as e:
            checked[path] = e
    result = checked[path]
    if isinstance(result, TinyVLMError):
        raise result
    return result

