"""Build the paper's ShortDesc / LongDesc data from real photos: an LLM rewrites each photo's human
captions into one description a 3-4-year-old could say, and we check it (length, small words).

Runs are long and endpoints flaky, so every accepted rewrite is appended to the output at once and
every finished image is listed in `<out>.done`; running again continues where the last run stopped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Literal

from ..errors import TinyVLMError
from ..llm import ChatClient, image_part
from ..text import LENGTHS
from ..text import words as split_words
from .records import Record

VOCAB_PATH = Path(__file__).with_name("child_vocab.txt")
MAX_CONSECUTIVE_ERRORS = 3  # endpoint errors in a row: the server is down, stop instead of dropping all

SYSTEM = (
    "You write picture-book descriptions of photos for children aged 3 to 4. You get what adults "
    "said about a photo. Write ONE description of {lo} to {hi} words, as a 3-4-year-old child would "
    "say it or hear it: short sentences, only simple everyday words a small child knows, no numbers "
    "written as digits, no names. Describe only what the adults' descriptions say is in the photo. "
    "Reply with the description only."
)


def load_vocab(path: str | os.PathLike = VOCAB_PATH) -> set[str]:
    """One lowercase word per line."""
    with open(path, encoding="utf-8") as f:
        return {line.strip().lower() for line in f if line.strip()}


def words(text: str) -> list[str]:
    """Lowercase words ("t-shirt" and "dog's" stay whole); their count is the description's length."""
    return split_words(text, joiners="'-")


def is_known(word: str, vocab: set[str]) -> bool:
    """In the vocabulary, or a regular form of a word in it (dogs, boxes, runs, running, jumped,
    puppies, bigger, dog's, t-shirt's parts), so the list can hold base forms only."""
    if word in vocab:
        return True
    if "-" in word:
        return all(is_known(part, vocab) for part in word.split("-"))
    for suffix, replacements in (("'s", ("",)), ("s'", ("s",)), ("ies", ("y",)), ("es", ("", "e")),
                                 ("s", ("",)), ("ied", ("y",)), ("ed", ("", "e")), ("ing", ("", "e")),
                                 ("ier", ("y",)), ("iest", ("y",)), ("er", ("", "e")), ("est", ("", "e")),
                                 ("ly", ("",))):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            stem = word[: -len(suffix)]
            candidates = [stem + r for r in replacements]
            if suffix in ("ed", "ing", "er", "est") and len(stem) > 2 and stem[-1] == stem[-2]:
                candidates.append(stem[:-1])  # running -> run, bigger -> big
            if any(c in vocab for c in candidates):
                return True
    return False


def check_rewrite(text: str, style: str, vocab: set[str]) -> str | None:
    """The reason a rewrite is unacceptable (to tell the LLM), or None if it is fine."""
    lo, hi = LENGTHS[style]
    ws = words(text)
    if not lo <= len(ws) <= hi:
        return f"It has {len(ws)} words; it must have {lo} to {hi} words."
    hard = sorted({w for w in ws if not is_known(w, vocab)})
    if hard:
        return f"These words are too hard for a small child: {', '.join(hard)}. Use simpler words."
    return None


def rewrite_captions(records: Iterable[Record], client: ChatClient, out_path: str | os.PathLike,
                     style: Literal["short", "long"] = "short", vocab: set[str] | None = None,
                     max_attempts: int = 3, send_image: bool = False, progress: bool = True) -> dict:
    """Rewrite each record's captions (`references`, else `[text]`) into a child-level description.

    Accepted rewrites are appended to `out_path` as records (text = rewrite, references = the
    originals); images that fail `max_attempts` checks are dropped. Both are listed in
    `out_path + ".done"`, so a rerun skips them. Endpoint errors leave an image for the next run.
    Returns {"written", "dropped", "skipped_done", "failures": [(image, reason)]}."""
    if style not in LENGTHS:
        raise TinyVLMError(f"unknown style '{style}': use 'short' or 'long'")
    vocab = load_vocab() if vocab is None else vocab
    out_path = Path(out_path)
    done_path = Path(f"{out_path}.done")
    done = set(done_path.read_text(encoding="utf-8").splitlines()) if done_path.exists() else set()
    summary = {"written": 0, "dropped": 0, "skipped_done": 0, "failures": []}
    errors_in_a_row = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as out, open(done_path, "a", encoding="utf-8") as done_file:
        for record in records:
            key = "|".join(os.path.abspath(p) for p in record.images)
            if key in done:
                summary["skipped_done"] += 1
                continue
            originals = record.references or [record.text]
            try:
                text, reason = _rewrite_one(record, originals, client, style, vocab, max_attempts, send_image)
                errors_in_a_row = 0
            except TinyVLMError as e:  # endpoint gave up (or image unreadable): not done, retry next run
                errors_in_a_row += 1
                summary["failures"].append((record.images[0], str(e)))
                if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    raise TinyVLMError(f"{errors_in_a_row} requests failed in a row, stopping "
                                       f"(rerun to resume): {e}") from None
                continue
            if text is None:
                summary["dropped"] += 1
                summary["failures"].append((record.images[0], reason))
            else:
                rel = [os.path.relpath(os.path.abspath(p), out_path.parent.resolve()) for p in record.images]
                rewritten = Record(images=rel, text=text, references=list(originals), extra=dict(record.extra))
                out.write(json.dumps(rewritten.to_json(), ensure_ascii=False) + "\n")
                out.flush()
                summary["written"] += 1
            done_file.write(key + "\n")
            done_file.flush()
            if progress:
                print(f"rewrite {record.images[0]}: {'ok' if text else 'dropped: ' + reason}", file=sys.stderr)
    return summary


def _rewrite_one(record, originals, client, style, vocab, max_attempts, send_image) -> tuple[str | None, str]:
    """Ask, check, and on failure ask again saying what was wrong. Returns (rewrite, "") or (None, reason)."""
    lo, hi = LENGTHS[style]
    content = [{"type": "text", "text": "What adults said about the photo:\n"
                + "\n".join(f"- {c}" for c in originals)
                + f"\nWrite the child's description ({lo} to {hi} words)."}]
    if send_image:
        content.append(image_part(record.images[0]))
    messages = [{"role": "system", "content": SYSTEM.format(lo=lo, hi=hi)}, {"role": "user", "content": content}]
    reason = "no attempt made"
    for _ in range(max_attempts):
        reply = " ".join(client.chat(messages, temperature=0.7, max_tokens=4 * hi).split()).strip("\"' ")
        reason = check_rewrite(reply, style, vocab)
        if reason is None:
            return reply, ""
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": reason + " Try again."}]
    return None, f"rejected after {max_attempts} attempts: {reason}"
