"""Writing into users' folders without losing anything.

Rules every write in tinyvlm follows:
- A file appears whole or not at all: it is written beside its place and renamed in (`write_atomic`).
- A folder that tinyvlm replaces whole (a model, a checkpoint, a split of shards; `atomic_dir`) is
  replaced only if everything in it is tinyvlm's own: files it names as its own. Anything else there
  (a `.git`, notes, a sub-folder) makes the write refuse with a TinyVLMError naming what is there;
  nothing that tinyvlm did not write is ever deleted.
- Files get the permissions any program's new files get: 0666 less the umask (some writers, e.g.
  safetensors, make 0600 files; `atomic_dir` and `write_atomic` fix that).
- Whatever fails, no temporary file or folder is left behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import TinyVLMError

Owned = Callable[[str], bool]  # does this file name belong to the folder's kind (i.e. did tinyvlm write it)?


def owned_names(patterns: Iterable[str]) -> Owned:
    """An `Owned` test from file names or glob patterns (`shard-*.jsonl`)."""
    patterns = tuple(patterns)
    return lambda name: any(fnmatch(name, p) for p in patterns)


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def normal_permissions(path: str | os.PathLike) -> None:
    """Give a file (or every file in a folder, and the folder) the mode a new one gets by default."""
    path, mask = Path(path), umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for f in path.iterdir():
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def foreign(folder: Path, owned: Owned) -> list[str]:
    """What in `folder` tinyvlm did not write: entries that are not files named as `owned`."""
    if not folder.exists() and not folder.is_symlink():
        return []
    if not folder.is_dir():
        return [f"{folder.name} (a file, not a folder)"]
    return sorted(f.name + ("/" if f.is_dir() else "") for f in folder.iterdir()
                  if f.is_symlink() or not f.is_file() or not owned(f.name))


def refuse_foreign(folder: Path, owned: Owned, what: str) -> None:
    """Raise a TinyVLMError naming what is in `folder` that tinyvlm did not write."""
    alien = foreign(folder, owned)
    if alien:
        shown = ", ".join(alien[:5]) + (f" and {len(alien) - 5} more" if len(alien) > 5 else "")
        raise TinyVLMError(f"{folder} holds files that are not {what} ({shown}): tinyvlm will not "
                           f"replace it; choose an empty or new folder")


def check_replaceable(path: str | os.PathLike, owned: Owned, what: str) -> None:
    """Raise the TinyVLMError atomic_dir(path, owned, what) would before writing: `path`, or the
    `.tmp`/`.old` siblings an interrupted write leaves (deleted only if all ours), holds other files."""
    path = Path(path)
    for folder in (path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old"), path):
        refuse_foreign(folder, owned, what)


def remove_owned(folder: Path, owned: Owned) -> None:
    """Delete only the files in `folder` that `owned` names (then the folder, if that left it empty)."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_file() and not f.is_symlink() and owned(f.name):
            f.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


@contextmanager
def atomic_dir(path: str | os.PathLike, owned: Owned, what: str) -> Iterator[Path]:
    """Yield a new folder to write in; when the block succeeds, it replaces `path` whole, unless
    `path` (or its `.tmp`/`.old` siblings, left by an interrupted write) holds anything that is not
    `what` (files `owned` names, or that this write writes too): then nothing is replaced and a
    TinyVLMError names what is there. An interrupted swap leaves the previous folder as PATH.old."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    check_replaceable(path, owned, what)  # before the work, so a refusal costs nothing
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        written = {f.name for f in tmp.iterdir()}
        refuse_foreign(path, lambda name: owned(name) or name in written, what)
        normal_permissions(tmp)
        for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write a whole file (text as UTF-8) beside its place, then rename it in; normal permissions."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
