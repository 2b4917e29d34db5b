"""Reading the text files users bring (captions, CSV, JSONL), whatever editor saved them.

Text is UTF-8; a UTF-8 byte-order mark (Windows Notepad, Excel's "CSV UTF-8") is dropped. A line that
is not UTF-8 is read as Windows-1252 (`FALLBACK`, what Excel and older Windows editors write; it is
also right for plain Latin-1 text), with one warning per file naming the file and the first such line.
A line that is neither raises a TinyVLMError naming the file and line. Line ends may be LF, CRLF or
a lone CR; they are not part of the lines.
"""
from __future__ import annotations

import os
import warnings as _warnings
from typing import Iterator

from ..errors import TinyVLMError

FALLBACK = "cp1252"
_BOM = b"\xef\xbb\xbf"


def text_lines(path: str | os.PathLike, warnings: list[str] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for every line of a text file, read as the module
    docstring says. The fallback warning goes to `warnings` if given, else to Python's warnings.
    Lines are read one at a time, so a file of any size streams."""
    warned, lineno = False, 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TinyVLMError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        for raw in f:
            if lineno == 0 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                try:
                    text = raw.decode(FALLBACK)
                except UnicodeDecodeError as e:
                    raise TinyVLMError(f"{path}:{lineno + 1}: byte 0x{raw[e.start]:02x} is neither UTF-8 nor "
                                       f"Windows-1252: save the file as UTF-8") from None
                if not warned:
                    _warn(f"{path}:{lineno + 1}: not UTF-8, read as Windows-1252 ({FALLBACK}); "
                          f"save the file as UTF-8 to be sure of its accents", warnings)
                    warned = True
            text = text.rstrip("\n")
            text = text[:-1] if text.endswith("\r") else text
            for piece in text.split("\r"):  # old Mac files end lines with a lone CR
                lineno += 1
                yield lineno, piece


def read_text(path: str | os.PathLike, warnings: list[str] | None = None) -> str:
    """A whole text file as one string with "\\n" line ends (see `text_lines`)."""
    return "".join(line + "\n" for _, line in text_lines(path, warnings))


def decode_text(data: bytes, where: str, warnings: list[str] | None = None) -> str:
    """Bytes held in memory (e.g. a tar member) -> text, by the same rules."""
    data = data[len(_BOM):] if data.startswith(_BOM) else data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode(FALLBACK)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TinyVLMError(f"{where}:{line}: byte 0x{data[e.start]:02x} is neither UTF-8 nor Windows-1252: "
                           f"save it as UTF-8") from None
    _warn(f"{where}: not UTF-8, read as Windows-1252 ({FALLBACK})", warnings)
    return text


def _warn(message: str, warnings: list[str] | None) -> None:
    if warnings is not None:
        warnings.append(message)
    else:
        _warnings.warn(message, stacklevel=3)
