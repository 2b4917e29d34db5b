"""Record sources that training reads from: one JSONL file, or a folder of JSONL shards.

Both give records in a seeded, per-epoch shuffled order, so a resumed run sees exactly the data
the uninterrupted run would have seen. Shards are read one at a time (shard order shuffled, then
records within the shard shuffled), so memory stays flat however large the dataset grows.

Shard layout written by `write_shards` (and `tinyvlm data import`):
    DIR/train/shard-00000.jsonl, DIR/train/shard-00001.jsonl, ...   (image paths relative to the shard)
    DIR/val/shard-00000.jsonl, ...
"""
from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import TinyVLMError
from ..files import atomic_dir, owned_names
from .records import Record, iter_jsonl, write_jsonl

SHARD_GLOB = "shard-*.jsonl"
SHARD_FILES = owned_names((SHARD_GLOB, "index.json"))  # all that a split's folder holds
HELD_OUT = 0.05  # the share of pictures training validates on when the data comes without a val split


# --- the one validation split ------------------------------------------------------------------
# Records are split by picture (their first image's file name), so every caption of a picture lands
# on the same side. Each picture gets a stable rank from a hash of its name; the validation side is
# the lowest ranks. Training applies it as a threshold, record by record, while streaming
# (`held_out`); the importer, which sees every picture first, takes an exact count of the lowest
# ranks (`pick_validation`). Seed 0 ranks by the bare name, so both pick the same pictures first.

def split_key(record: Record) -> str:
    return Path(record.images[0]).name


def split_rank(key: str, seed: int = 0) -> int:
    """A picture's place in the split order, 0..9999: crc32 of its name (salted by a nonzero seed),
    stable across runs, machines and input order."""
    return zlib.crc32((f"{seed}:{key}" if seed else key).encode()) % 10_000


def held_out(record: Record, fraction: float = HELD_OUT, seed: int = 0) -> bool:
    """Is this record's picture on the validation side? (streaming form: about `fraction` of them)"""
    return split_rank(split_key(record), seed) < fraction * 10_000


def pick_validation(keys: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """The validation pictures among `keys` (exact form): the round(fraction * n) lowest ranks, at
    least one if any are asked for, and at least one left for training."""
    ranked = sorted(set(keys), key=lambda k: (split_rank(k, seed), k))
    n_val = round(len(ranked) * fraction)
    if fraction > 0 and len(ranked) > 1:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    return set(ranked[:n_val])


class RecordSource:
    """A finite, re-iterable collection of records with a deterministic shuffled order per epoch."""

    def __init__(self, files: list[Path], counts: list[int] | None = None):
        if not files:
            raise TinyVLMError("no records: the dataset is empty")
        self.files = files
        self.counts = counts if counts is not None else [_count_lines(f) for f in files]
        if sum(self.counts) == 0:
            raise TinyVLMError(f"no records in {files[0].parent}: the dataset is empty")
        self.parsed: list[Record] | None = None  # a one-file source's records, parsed once for every epoch

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[Record]:
        for f in self.files:
            yield from iter_jsonl(f)

    def epoch(self, epoch: int, seed: int) -> Iterator[Record]:
        """All records once, in an order fixed by (seed, epoch)."""
        rng = random.Random(f"{seed}:{epoch}")
        order = list(range(len(self.files)))
        rng.shuffle(order)
        for i in order:
            shard = self._shard(i)
            rng.shuffle(shard)
            yield from shard

    def _shard(self, i: int) -> list[Record]:
        """Shard i's records, a new list. Several shards are read one at a time (memory stays flat);
        a single file is parsed once and kept, since every epoch reads it whole again anyway."""
        if len(self.files) > 1:
            return list(iter_jsonl(self.files[i]))
        if self.parsed is None:
            self.parsed = list(iter_jsonl(self.files[0]))
        return list(self.parsed)

    def head(self, n: int) -> list[Record]:
        """The first n records in file order (for evaluation and quick looks)."""
        out: list[Record] = []
        for r in self:
            if len(out) >= n:
                break
            out.append(r)
        return out


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def open_records(path: str | os.PathLike, split: str = "train") -> RecordSource:
    """Open a JSONL file, a sharded dataset folder (DIR/<split>/shard-*.jsonl), or a folder with one
    JSONL file in it (e.g. the picture-book world's output)."""
    p = Path(path)
    if p.is_file():
        return RecordSource([p])
    if not p.exists():
        raise TinyVLMError(f"dataset not found: {p}")
    if (p / split).is_dir():
        files = sorted((p / split).glob(SHARD_GLOB))
        if not files:
            raise TinyVLMError(f"{p / split}: no {SHARD_GLOB} files")
        return RecordSource(files)
    for name in (f"{split}.jsonl", "records.jsonl", "world.jsonl"):
        if (p / name).is_file():
            return RecordSource([p / name])
    jsonls = sorted(p.glob("*.jsonl"))
    if len(jsonls) == 1:
        return RecordSource(jsonls)
    raise TinyVLMError(f"{p}: no '{split}/' shards and no single .jsonl file to read")


def write_shards(records: Iterable[Record], out_dir: str | os.PathLike, split: str,
                 shard_size: int = 10_000) -> int:
    """Write records as DIR/<split>/shard-NNNNN.jsonl (image paths relative to the shard's folder).
    The split's folder is written whole beside its place and swapped in, so the old shards stay
    until the new ones are complete; a folder holding anything but shards is refused, not emptied."""
    n, buf, k = 0, [], 0
    with atomic_dir(Path(out_dir) / split, SHARD_FILES, "tinyvlm shards") as split_dir:
        for r in records:
            buf.append(r)
            if len(buf) == shard_size:
                n += write_jsonl(buf, split_dir / f"shard-{k:05d}.jsonl")
                buf, k = [], k + 1
        if buf or k == 0:
            n += write_jsonl(buf, split_dir / f"shard-{k:05d}.jsonl")
        (split_dir / "index.json").write_text(json.dumps({"records": n, "shards": k + (1 if buf else 0)}))
    return n
