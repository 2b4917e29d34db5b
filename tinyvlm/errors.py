"""The one exception for user mistakes, and the one range check every config uses."""
from __future__ import annotations

import math


class TinyVLMError(Exception):
    """A user-facing error: bad input, missing files, invalid options. The CLI prints its message
    (one line) and exits 2 instead of showing a traceback."""


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
                hi_open: bool = False, note: str = "") -> None:
    """Raise one clear TinyVLMError unless `value` is a finite number (a whole number with
    `integer`) in [lo, hi] (or [lo, hi) with `hi_open`); None bounds are open. NaN and inf are
    never valid. `name` is what the user typed (an option or a field)."""
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = number and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = [f">= {lo:g}"] if lo is not None else []
        bounds += [f"{'<' if hi_open else '<='} {hi:g}"] if hi is not None else []
        raise TinyVLMError(f"{name} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
                           f"{f' ({note})' if note else ''}; got {value!r}")
