"""A reader for VL-ICL Bench's own data (Zong et al., ICLR 2025; ys-zong/VL-ICL), so a user who has it
can run `tinyvlm eval --suite icl --data VL-ICL/<task>`.

The layout, as ys-zong/VL-ICL's utils/utils.py (load_data) and I2T_inference.py read it:

    VL-ICL/                      the folder above the task folder: image paths are relative to it
      operator_induction/query.json, support.json
      open_mi/query.json, support.json
      ...

Each item is {"image": path or [paths], "question": str, "answer": ...}. How k shots are drawn
for a query follows utils/ICL_utils.py (select_demonstration):
- operator_induction*: k support items at random; a support answer is a list in the order
  [+, -, x] and the query's "operator" picks one.
- open_mi (fast binding): the query names its "classes" and its "support" ({class: {"images":
  [...]}}); k shots of each of two classes (the query's and one other), question "This is a".
- matching_mi: k support items, each a "same" and a "diff" shot (2k shots).
- any other task: k support items at random.
Answers are compared as text; operator_induction and clevr answers are numbers (format_answer).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyVLMError
from .episodes import Episode, Shot

OPERATORS = {"+": 0, "-": 1, "x": 2}  # the order of an operator_induction support answer
NUMERIC = ("operator_induction", "operator_induction_interleaved", "clevr")


def is_vlicl(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "query.json").is_file() and (p / "support.json").is_file()


@dataclass
class VLICLTask:
    name: str          # the task folder's name, e.g. "operator_induction"
    root: Path         # the folder above it
    query: list[dict]
    support: list[dict]

    @property
    def numeric(self) -> bool:
        return self.name.startswith(NUMERIC)

    def _shot(self, item: dict, where: str, answer=None) -> Shot:
        images = item.get("image")
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
            raise TinyVLMError(f"{self.name}/{where}: an item needs 'image', a path or a list of paths")
        question = item.get("question", "")
        answer = item.get("answer") if answer is None else answer
        if not isinstance(question, str) or answer is None:
            raise TinyVLMError(f"{self.name}/{where}: an item needs a 'question' and an 'answer'")
        return Shot(tuple(str(self.root / p) for p in images), question, str(answer))

    def episodes(self, k: int, seed: int = 0) -> list[Episode]:
        """One episode a query, its k shots drawn as VL-ICL draws them, from (seed, k, query index)."""
        out = []
        for i, q in enumerate(self.query):
            rng = random.Random(f"vlicl:{seed}:{k}:{i}")
            out.append(Episode(self.name, tuple(self._support(q, k, rng, i)), self._shot(q, f"query.json[{i}]")))
        return out

    def _support(self, q: dict, k: int, rng: random.Random, i: int) -> list[Shot]:
        where = f"query.json[{i}]"
        if self.name == "open_mi":
            classes, sup = q.get("classes"), q.get("support")
            if not isinstance(classes, list) or not isinstance(sup, dict) or q.get("answer") not in classes:
                raise TinyVLMError(f"open_mi/{where}: a query needs 'classes', its 'answer' among them, and 'support'")
            other = rng.choice([c for c in classes if c != q["answer"]])
            order = [q["answer"], other] if rng.random() < 0.5 else [other, q["answer"]]
            shots = []
            for j in range(k):
                for c in order:
                    images = sup.get(c, {}).get("images", [])
                    if j >= len(images):
                        raise TinyVLMError(f"open_mi/{where}: class {c!r} has {len(images)} support pictures, "
                                           f"fewer than {k} shots")
                    shots.append(Shot((str(self.root / images[j]),), "This is a", c))
            return shots
        if k > len(self.support):
            raise TinyVLMError(f"{self.name}: {k} shots asked, but support.json holds {len(self.support)} items")
        picked = rng.sample(range(len(self.support)), k)
        if self.name == "matching_mi":
            return [self._shot(self.support[j][part], f"support.json[{j}].{part}")
                    for j in picked for part in ("same", "diff")]
        if self.name.startswith("operator_induction"):
            op = q.get("operator")
            if op not in OPERATORS:
                raise TinyVLMError(f"{self.name}/{where}: 'operator' must be one of {', '.join(OPERATORS)}; got {op!r}")
            shots = []
            for j in picked:
                answers = self.support[j].get("answer")
                if not isinstance(answers, list) or len(answers) != 3:
                    raise TinyVLMError(f"{self.name}/support.json[{j}]: 'answer' must be a list [+, -, x]")
                shots.append(self._shot(self.support[j], f"support.json[{j}]", answers[OPERATORS[op]]))
            return shots
        return [self._shot(self.support[j], f"support.json[{j}]") for j in picked]


def read_vlicl(task_dir: str | os.PathLike) -> VLICLTask:
    """A VL-ICL task folder (query.json and support.json in it); one clear error if it is not one."""
    p = Path(task_dir)
    if not is_vlicl(p):
        raise TinyVLMError(f"{p}: not a VL-ICL task folder (it needs query.json and support.json)")
    data = []
    for name in ("query.json", "support.json"):
        try:
            items = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TinyVLMError(f"{p / name}: cannot read it as JSON: {e}") from None
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise TinyVLMError(f"{p / name}: must be a JSON list of objects")
        data.append(items)
    if not data[0]:
        raise TinyVLMError(f"{p / 'query.json'}: no queries")
    return VLICLTask(p.resolve().name, p.resolve().parent, data[0], data[1])
