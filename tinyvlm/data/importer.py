"""Import a dataset in any supported format into the sharded layout training streams from.

    out_dir/images/<content hash>.<ext>     every usable image once, original bytes
    out_dir/train/shard-*.jsonl, out_dir/val/shard-*.jsonl
    out_dir/import.json                     counts and every skipped entry with its reason

Every image is decoded once (`load_image`) so training never meets a broken file (or a picture over
the pixel limit); exact duplicates are dropped; the train/val split is by image, so no picture is
seen in both. The console summary names the first skipped entries and points at import.json.

Writing never loses anything: the new train/ and val/ shards replace the old ones only once they are
complete (a folder holding anything but shards is refused, not emptied), images are only added,
import.json is renamed into place, and whatever fails, no temporary file is left in `out_dir`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..files import remove_owned, write_atomic
from .dataset import SHARD_FILES, pick_validation, split_key, write_shards
from .images import load_image
from .readers import ImportReport, guess_format, read_any
from .records import Record, iter_jsonl, write_jsonl


def import_dataset(src: str | os.PathLike, fmt: str, out_dir: str | os.PathLike,
                   val_fraction: float = 0.1, seed: int = 0, shard_size: int = 5000,
                   progress: bool = True, image_dir: str | os.PathLike | None = None) -> ImportReport:
    """Read `src` (format `fmt`, or "auto"), validate, dedupe, split by image and write `out_dir`.
    `image_dir` overrides where coco/csv captions look for their images. Returns the report;
    with `progress`, shows a progress bar and prints the summary to stderr."""
    check_range("val_fraction", val_fraction, 0, 1, hi_open=True, note="the share of pictures held out")
    check_seed("seed", seed)
    check_range("shard_size", shard_size, 1, MAX_COUNT, integer=True, note="records per shard file")
    fmt = guess_format(src) if fmt == "auto" else fmt  # import.json records the format actually used
    out = Path(out_dir).resolve()  # absolute, so write_jsonl stores paths relative to each shard
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    # Our own scratch folder (a fresh name, so nothing of the user's is ever in it), removed at the end.
    work = Path(tempfile.mkdtemp(dir=out, prefix=".import-"))
    staged, extract_dir = work / "staged.jsonl", work / "extract"
    report, split_keys = ImportReport(), set()
    try:
        records = read_any(src, fmt, report, extract_dir=extract_dir, image_dir=image_dir)
        bar = tqdm(records, desc="importing", unit=" records", disable=not progress)
        # Stage validated records on disk, so the split can be exact without holding them in memory.
        write_jsonl(_validated(bar, images_dir, report, split_keys), staged)
        if report.records == 0:
            first = f" (first problem: {report.problems[0]})" if report.problems else ""
            raise TinyVLMError(f"no usable records in {src}{first}")
        val_keys = pick_validation(split_keys, val_fraction, seed)

        def split(name: str) -> Iterator[Record]:
            return (r for r in iter_jsonl(staged) if (split_key(r) in val_keys) == (name == "val"))

        report.train = write_shards(split("train"), out, "train", shard_size)
        if val_keys:
            report.val = write_shards(split("val"), out, "val", shard_size)
        else:  # no val/ shards at all when nothing is held out, so training makes its own split
            remove_owned(out / "val", SHARD_FILES)  # a previous import's, never anything else
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"source": str(src), "format": fmt, "val_fraction": val_fraction, "seed": seed}
    write_atomic(out / "import.json", json.dumps(info | report.to_json(), indent=2, ensure_ascii=False))
    if progress:
        print("\n".join(filter(None, [report.summary(), report.details(out / "import.json")])), file=sys.stderr)
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
                    _copy(p, stored[h])
        r = replace(r, images=[str(stored[h]) for h in hashes])
        split_keys.add(split_key(r))
        report.records += 1
        report.captions += len(r.references or [r.text])
        report.images = len(stored)
        yield r


def _copy(src: str, dst: Path) -> None:
    """Copy an image in whole or not at all (a half-copied file would pass `exists()` next time)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

