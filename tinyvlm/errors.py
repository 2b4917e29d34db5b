"""The one exception for user mistakes, and the one range check every config uses."""
from __future__ import annotations

import math

MAX_SEED = 2**32 - 1  # seeds are whole numbers in [0, MAX_SEED], what every random generator accepts
MAX_COUNT = 10**9     # the most of anything counted (steps, records, batches): beyond any run, below every overflow


class TinyVLMError(Exception):
    """A user-facing error: bad input, missing files, invalid options. The CLI prints its message
    (one line) and exits 2 instead of showing a traceback."""


class TrainedTaskWarning(UserWarning):
    """A model was asked for a task (a description style, questions) its training never taught."""


class UnknownConfigWarning(UserWarning):
    """A model folder's config.json names fields this tinyvlm does not know (a newer tinyvlm wrote
    it, or a person added them): they are ignored, so the model may not behave as its writer meant."""


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *, integer: bool = False,
                lo_open: bool = False, hi_open: bool = False, note: str = "") -> None:
    """Raise one clear TinyVLMError unless `value` is a finite number (a whole number with
    `integer`) in [lo, hi] ((lo, ...) with `lo_open`, (..., hi) with `hi_open`); None bounds are
    open. NaN and inf are never valid. `name` is what the user typed (an option or a field)."""
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    # a Python int is always finite (and may be too large for math.isfinite)
    ok = number and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = [f"{'>' if lo_open else '>='} {_number(lo)}"] if lo is not None else []
        bounds += [f"{'<' if hi_open else '<='} {_number(hi)}"] if hi is not None else []
        got = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + " ..."
        raise TinyVLMError(f"{name} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
                           f"{f' ({note})' if note else ''}; got {got}")


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_seed(name: str, value) -> None:
    """A seed: a whole number in [0, MAX_SEED]."""
    check_range(name, value, 0, MAX_SEED, integer=True)
