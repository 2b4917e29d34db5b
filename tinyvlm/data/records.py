"""The one record shape every data source becomes, and its JSONL form.

A record is one or more images, the text the model should write about them, an optional prompt
(with `<image>` slots marking where each image goes) or a whole conversation of turns (with
`<image>` anywhere in any user turn), and optional ground truth:
`references` (human captions), `answer` (for a question), `scene` (a picture-book scene graph),
plus source-specific extras such as `questions` and `negatives` kept in `extra`.

JSONL form, one object per line:
    {"image": "a.png", "text": "A red ball on the grass."}
    {"images": ["a.png", "b.png"], "prompt": "<image> <image> Which has a dog?", "text": "the second"}
    {"images": ["a.png", "b.png"], "turns": [{"role": "user", "content": "<image> What colour?"},
                                             {"role": "assistant", "content": "red"},
                                             {"role": "user", "content": "And here? <image>"},
                                             {"role": "assistant", "content": "blue"}]}
Image paths are relative to the JSONL file's folder unless absolute.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import TinyVLMError
from ..tokenizer import IMAGE_SLOT, ROLES
from .textfiles import text_lines

Turn = tuple[str, str]  # (role, text): "user" or "assistant"
_KNOWN = {"image", "images", "text", "prompt", "turns", "references", "answer", "scene"}


@dataclass
class Record:
    images: list[str]
    text: str
    prompt: str = ""
    references: list[str] | None = None
    answer: str | None = None
    scene: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    turns: list[Turn] | None = None  # a conversation; `text` is then its last assistant turn

    def conversation(self) -> list[Turn]:
        """The record as turns: its own, or (prompt, text) as one exchange."""
        return list(self.turns) if self.turns else [("user", self.prompt), ("assistant", self.text)]

    def to_json(self) -> dict:
        d: dict[str, Any] = {"image": self.images[0]} if len(self.images) == 1 else {"images": self.images}
        if self.turns:
            d["turns"] = [{"role": r, "content": c} for r, c in self.turns]
        else:
            d["text"] = self.text
        if self.prompt:
            d["prompt"] = self.prompt
        for k in ("references", "answer", "scene"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: dict, root: str | os.PathLike | None = None) -> "Record":
        """Build a record from a JSON object; raises ValueError with a reason if it is malformed."""
        if not isinstance(d, dict):
            raise ValueError("a record must be a JSON object")
        images = d.get("images", [d["image"]] if "image" in d else None)
        if isinstance(images, str):  # iterated, "abc" would be three paths
            raise ValueError(f"'images' must be a list of paths; got the string {images[:40]!r} (use 'image' for one)")
        if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
            raise ValueError("a record needs 'image' (a path) or 'images' (a list of paths)")
        prompt, text, turns = d.get("prompt", ""), d.get("text"), None
        if "turns" in d:
            turns = parse_turns(d["turns"])
            text = turns[-1][1]
        if not isinstance(prompt, str):
            raise ValueError("'prompt' must be a string")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a record needs a non-empty 'text'")
        if root is not None:
            images = [p if os.path.isabs(p) else os.path.join(root, p) for p in images]
        refs = d.get("references")
        if refs is not None and not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
            raise ValueError("'references' must be a list of strings")
        extra = {k: v for k, v in d.items() if k not in _KNOWN}
        return cls(images=list(images), text=text.strip(), prompt=prompt or "", references=refs,
                   answer=d.get("answer"), scene=d.get("scene"), extra=extra, turns=turns)


def parse_turns(turns: Any) -> list[Turn]:
    """A JSON conversation -> (role, text) pairs; ValueError unless it alternates user and
    assistant turns of text, from a user turn to an assistant turn."""
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise ValueError("'turns' must be a non-empty list of {role, content} objects")
    out = []
    for k, t in enumerate(turns):
        role, content = t.get("role"), t.get("content")
        if role != ROLES[k % 2]:
            raise ValueError(f"turn {k + 1} is {role!r}: turns alternate 'user' and 'assistant', from the user")
        if not isinstance(content, str):
            raise ValueError(f"turn {k + 1}'s 'content' must be a string")
        out.append((role, content))
    if out[-1][0] != "assistant":
        raise ValueError("the last turn must be the assistant's")
    return out


def image_slots(prompt: str, n_images: int, have: int | None = None) -> str:
    """Return the prompt with slots for all `n_images`: images without a slot (of the `have` the
    whole conversation holds, default: this prompt's) go first."""
    have = prompt.count(IMAGE_SLOT) if have is None else have
    if have > n_images:
        raise TinyVLMError(f"prompt has {have} {IMAGE_SLOT} slots but only {n_images} image(s) were given")
    return IMAGE_SLOT * (n_images - have) + prompt


def iter_jsonl(path: str | os.PathLike, errors: list[str] | None = None,
               warnings: list[str] | None = None) -> Iterator[Record]:
    """Yield records from a JSONL file. Bad lines are reported in `errors` (if given) and skipped;
    without `errors`, the first bad line raises a TinyVLMError naming the file and line. Text is
    read by text.py's rules (BOM, CRLF, Windows-1252 fallback warned in `warnings`)."""
    path = Path(path)
    if not path.exists():
        raise TinyVLMError(f"{path}: no such file")
    root = path.parent
    for lineno, line in text_lines(path, warnings):
        if not line.strip():
            continue
        try:
            yield Record.from_json(json.loads(line), root=root)
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # JSONDecodeError is a ValueError
            msg = f"{path}:{lineno}: {e.__class__.__name__ if isinstance(e, RecursionError) else e}"
            if errors is None:
                raise TinyVLMError(msg) from None
            errors.append(msg)


def read_jsonl(path: str | os.PathLike, errors: list[str] | None = None) -> list[Record]:
    return list(iter_jsonl(path, errors))


def write_jsonl(records: Iterable[Record], path: str | os.PathLike, root: str | os.PathLike | None = None) -> int:
    """Write records atomically; image paths are made relative to `root` (default: the file's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                d = r.to_json()
                rel = [os.path.relpath(p, root) if os.path.isabs(p) else p for p in r.images]
                d.pop("image", None), d.pop("images", None)
                d = ({"image": rel[0]} if len(rel) == 1 else {"images": rel}) | d
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:  # whatever failed (records come from a generator), leave no temp file
        tmp.unlink(missing_ok=True)
        raise
    return n
