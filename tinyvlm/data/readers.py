"""Readers that turn each dataset format users already have into `Record`s.

Every reader is a generator (records come out one at a time, images stay on disk) and takes an
`ImportReport`: a bad entry (missing image, bad JSON line, empty or missing caption) is written to
`report.problems` naming the file and why, and skipped, so one broken line never loses the rest.
Readers only check that image files exist; decoding them is the importer's job (`load_image`).
Text files are read by `text.py`'s rules (UTF-8 with or without a BOM, any line ends, Windows-1252
fallback with a warning in `report.warnings`).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import lzma
import os
import re
import tarfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import TinyVLMError
from .records import Record, iter_jsonl
from .textfiles import decode_text, read_text

FORMATS = ("coco", "csv", "jsonl", "folder", "webdataset")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_EXTS = (".tar", ".tar.gz", ".tgz")
_WDS_IMAGES = ("jpg", "jpeg", "png", "webp")
_WDS_EXTS = (*_WDS_IMAGES, "txt", "json")


@dataclass
class ImportReport:
    """What an import read, kept and skipped; every skipped entry has one line in `problems`;
    what was read but deserves a look (an encoding guessed) has one line in `warnings`."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: int = 0
    records: int = 0
    captions: int = 0
    duplicates: int = 0
    train: int = 0
    val: int = 0

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        return (f"images: {self.images}, captions: {self.captions}, skipped: {self.skipped}, "
                f"duplicates: {self.duplicates}, train: {self.train}, val: {self.val}")

    def details(self, full_list: str | os.PathLike | None = None, show: int = 5) -> str:
        """The first `show` skipped entries and warnings by name, and where the full list is
        (`full_list`: the import.json); empty when there are none."""
        lines = []
        for title, items in (("skipped", self.problems), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items[:show]]
                if len(items) > show:
                    lines.append(f"  ... and {len(items) - show} more")
        if lines and full_list:
            lines.append(f"the full list is in {full_list}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"images": self.images, "records": self.records, "captions": self.captions,
                "skipped": self.skipped, "duplicates": self.duplicates, "train": self.train,
                "val": self.val, "problems": self.problems, "warnings": self.warnings}


def _caption_record(image: Path, captions: Iterable[str], where: str, report: ImportReport) -> Record | None:
    """One image with its captions -> a record (first caption as text, all as references), or None
    with the reason reported. Callers report individual empty captions where they know the line."""
    try:
        found = image.is_file()
    except (OSError, ValueError):  # a name with a NUL byte, or too long for the file system
        found = False
    if not found:
        report.problems.append(f"{where}: image not found: {image}")
        return None
    captions = [c.strip() for c in captions if c and c.strip()]
    if not captions:
        report.problems.append(f"{where}: no caption for {image.name}")
        return None
    return Record(images=[str(image)], text=captions[0], references=captions)


def read_coco(captions_json: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
              report: ImportReport) -> Iterator[Record]:
    """COCO captions JSON -> one record per image. `image_dir` defaults to `images/` beside the
    JSON (or the JSON's own folder). The JSON itself is loaded whole: that is how COCO ships."""
    path = Path(captions_json)
    image_dir = Path(image_dir) if image_dir else _default_image_dir(path)
    try:
        data = json.loads(read_text(path, report.warnings))
        images = {im["id"]: im["file_name"] for im in data["images"]}
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise TinyVLMError(f"{path}: not a COCO captions file ({e.__class__.__name__}: {e})") from None
    captions: dict = defaultdict(list)
    for ann in annotations:
        ann = ann if isinstance(ann, dict) else {}
        where, caption = f"{path}: annotation {ann.get('id', '?')}", ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            report.problems.append(f"{where}: empty caption")
        elif ann.get("image_id") not in images:
            report.problems.append(f"{where}: unknown image_id {ann.get('image_id')!r}")
        else:
            captions[ann["image_id"]].append(caption)
    for image_id, file_name in images.items():
        where = f"{path}: image {image_id}"
        record = _caption_record(image_dir / file_name, captions.get(image_id, []), where, report)
        if record:
            yield record


def read_csv(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
             report: ImportReport) -> Iterator[Record]:
    """Flickr8k-style CSV (header `image,caption`, one row per caption) -> one record per image.
    Rows are grouped by image wherever they appear, so only the captions are held in memory."""
    path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir else _default_image_dir(path)
    captions: dict[str, list[str]] = {}
    rows = csv.DictReader(io.StringIO(read_text(path, report.warnings)))
    try:
        if not {"image", "caption"} <= set(rows.fieldnames or []):
            raise TinyVLMError(f"{path}: needs a header line 'image,caption', found {rows.fieldnames}")
        for row in rows:
            image, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
            if not image:
                report.problems.append(f"{path}:{rows.line_num}: no image name")
                continue
            captions.setdefault(image, [])
            if caption:
                captions[image].append(caption)
            else:
                report.problems.append(f"{path}:{rows.line_num}: empty caption for {image}")
    except csv.Error as e:  # e.g. a field over csv's size limit
        raise TinyVLMError(f"{path}:{rows.line_num}: not a CSV file ({e})") from None
    for image, caps in captions.items():
        record = _caption_record(image_dir / image, caps, str(path), report)
        if record:
            yield record


def read_jsonl(path: str | os.PathLike, *, report: ImportReport) -> Iterator[Record]:
    """Our own JSONL form (see records.py); records whose image files are missing are skipped."""
    for record in iter_jsonl(path, errors=report.problems, warnings=report.warnings):
        missing = [p for p in record.images if not os.path.isfile(p)]
        if missing:
            report.problems.append(f"{path}: image not found: {missing[0]}")
        else:
            yield record


def read_folder(folder: str | os.PathLike, *, report: ImportReport) -> Iterator[Record]:
    """A folder (searched recursively) of images, each with a same-name `.txt` (or `.TXT`) file
    holding one caption per non-empty line.

    Two pictures sharing one caption file (`a.png` and `a.jpg` beside `a.txt`) are ambiguous: often
    one picture saved twice, which would put a near-duplicate across the train/val split, sometimes
    two pictures that the captions do not both describe. The first by name is imported and each
    other one is skipped and reported, naming the one kept, so the user can rename it."""
    root = Path(folder)
    if not root.is_dir():
        raise TinyVLMError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    captions = {p.with_suffix(""): p for p in files if p.suffix.lower() == ".txt"}
    images: dict[Path, Path] = {}
    for p in files:
        if p.suffix.lower() not in IMAGE_EXTS:
            continue
        kept = images.setdefault(p.with_suffix(""), p)
        if kept is not p:
            report.problems.append(f"{p}: skipped, {kept.name} has the same name and takes its caption "
                                   f"file {p.stem}.txt (give each picture its own name)")
    for stem, txt in captions.items():
        if stem not in images:
            report.problems.append(f"{txt}: caption file without an image")
    for stem, image in images.items():
        txt = captions.get(stem)
        if txt is None:
            report.problems.append(f"{image}: no caption file {stem.name}.txt")
            continue
        try:
            lines = read_text(txt, report.warnings).splitlines()
        except TinyVLMError as e:
            report.problems.append(f"skipped {image.name}: {e}")
            continue
        record = _caption_record(image, lines, str(txt), report)
        if record:
            yield record


def read_webdataset(pattern_or_dir: str | os.PathLike, *, report: ImportReport,
                    extract_dir: str | os.PathLike | None) -> Iterator[Record]:
    """WebDataset tar shards: members sharing a key (`KEY.jpg` + `KEY.txt` or `KEY.json`) form one
    sample. Records carry image paths, so image bytes are written to `extract_dir` (named
    SHARD__KEY.ext). Tars are streamed; a corrupt shard is reported and the next one read."""
    if extract_dir is None:
        raise TinyVLMError("reading WebDataset shards needs extract_dir: a folder for the image files")
    extract_dir = Path(extract_dir)
    extract_dir.mkdir(parents=True, exist_ok=True)
    for shard in _shard_paths(str(pattern_or_dir)):
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for key, members in _samples(tar):
                    # Name extracted files after shard and key, so a later "cannot read" names the sample.
                    stem = extract_dir / re.sub(r"[^\w.-]", "_", f"{Path(shard).name}__{key}")
                    record = _webdataset_record(members, f"{shard}:{key}", stem, report)
                    if record:
                        yield record
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
            report.problems.append(f"{shard}: unreadable tar, rest of shard skipped ({e.__class__.__name__}: {e})")


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive tar members by key (path up to the first dot of the file name), as
    WebDataset writes them."""
    key, members = None, {}
    for m in tar:
        if not m.isfile():
            continue
        folder, name = os.path.split(m.name)
        stem, _, ext = name.partition(".")
        k = os.path.join(folder, stem)
        if k != key and members:
            yield key, members
            members = {}
        key = k
        if ext.lower() in _WDS_EXTS:  # skip reading members we never use (embeddings, metadata)
            members[ext.lower()] = tar.extractfile(m).read()
    if members:
        yield key, members


def _webdataset_record(members: dict[str, bytes], where: str, stem: Path,
                       report: ImportReport) -> Record | None:
    ext = next((e for e in _WDS_IMAGES if e in members), None)
    if ext is None:
        report.problems.append(f"{where}: no image (.jpg/.jpeg/.png/.webp)")
        return None
    if "txt" in members:
        try:
            caption = decode_text(members["txt"], f"{where}.txt", report.warnings)
        except TinyVLMError as e:
            report.problems.append(str(e))
            return None
    elif "json" in members:
        try:
            meta = json.loads(members["json"])
            caption = (meta.get("caption") or meta.get("text")) if isinstance(meta, dict) else None
        except ValueError as e:
            report.problems.append(f"{where}: bad JSON ({e})")
            return None
    else:
        report.problems.append(f"{where}: no caption (.txt or .json)")
        return None
    if not isinstance(caption, str) or not caption.strip():
        report.problems.append(f"{where}: empty caption")
        return None
    image = stem.with_name(f"{stem.name}.{ext}")
    image.write_bytes(members[ext])
    return Record(images=[str(image)], text=caption.strip(), references=[caption.strip()])


def _shard_paths(pattern: str) -> list[str]:
    """A folder of tars, one tar, a glob, or WebDataset brace notation (`data-{000..009}.tar`)."""
    p = Path(pattern)
    if p.is_dir():
        shards = sorted(str(f) for f in p.iterdir() if f.name.lower().endswith(TAR_EXTS))
    elif p.is_file():
        shards = [pattern]
    else:
        shards = sorted(f for pat in _expand_braces(pattern) for f in glob.glob(pat))
    if not shards:
        raise TinyVLMError(f"no WebDataset shards (.tar) found at {pattern}")
    return shards


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    return [x for i in range(int(lo), int(hi) + 1)
            for x in _expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])]


def _default_image_dir(annotation_file: Path) -> Path:
    beside = annotation_file.parent / "images"
    return beside if beside.is_dir() else annotation_file.parent


def guess_format(src: str | os.PathLike) -> str:
    """Guess the format from the path: file extension, or for a folder what it contains."""
    p = Path(src)
    name = p.name.lower()
    if p.is_dir():
        names = [f.name.lower() for f in p.iterdir()]
        for ext, fmt in ((TAR_EXTS, "webdataset"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "coco")):
            if any(n.endswith(ext) for n in names):
                return fmt
        return "folder"
    if name.endswith(TAR_EXTS) or "{" in name or "*" in name:
        return "webdataset"
    for ext, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".json", "coco")):
        if name.endswith(ext):
            return fmt
    raise TinyVLMError(f"cannot guess the format of {src}: give one of {', '.join(FORMATS)}")


def _single_file(src: Path, ext: str) -> Path:
    """A folder given for a one-file format stands for the one such file inside it."""
    if not src.is_dir():
        if not src.exists():
            raise TinyVLMError(f"{src}: no such file")
        return src
    found = sorted(src.glob(f"*{ext}"))
    if len(found) != 1:
        raise TinyVLMError(f"{src}: expected exactly one {ext} file, found {len(found)}")
    return found[0]


def read_any(src: str | os.PathLike, fmt: str, report: ImportReport,
             extract_dir: str | os.PathLike | None = None,
             image_dir: str | os.PathLike | None = None) -> Iterator[Record]:
    """Read `src` in format `fmt` (one of FORMATS, or "auto" to guess from the path).
    `image_dir` applies to coco and csv; `extract_dir` is needed for webdataset."""
    if fmt == "auto":
        fmt = guess_format(src)
    if fmt not in FORMATS:
        raise TinyVLMError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)} or auto")
    p = Path(src)
    if fmt == "coco":
        return read_coco(_single_file(p, ".json"), image_dir, report=report)
    if fmt == "csv":
        return read_csv(_single_file(p, ".csv"), image_dir, report=report)
    if fmt == "jsonl":
        return read_jsonl(_single_file(p, ".jsonl"), report=report)
    if fmt == "folder":
        return read_folder(p, report=report)
    return read_webdataset(src, report=report, extract_dir=extract_dir)
