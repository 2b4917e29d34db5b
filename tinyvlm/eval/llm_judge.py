"""The NanoVLMs paper's rubric, graded by any chat LLM: each output is marked "as if a story written
by a student" on five dimensions, 0-10 each.

One bad reply must not sink a long run: malformed or out-of-range answers are asked again (with the
reason), and items that still fail, time out, or hit a dead server are reported, not raised.
"""
from __future__ import annotations

import sys
from statistics import fmean

from ..errors import TinyVLMError
from ..llm import ChatClient, image_part, parse_json_object

from .rubric import MEANINGS, RUBRIC

SYSTEM = (
    "You are a teacher grading short stories written by young students. Each student looked at a "
    "picture (when one is shown) and wrote a description of it; sometimes the student was given the "
    "beginning of the description and had to continue it. Grade the student's text as if it were a "
    "story written by a student, on these dimensions, each an integer from 0 (worst) to 10 (best):\n"
    + "".join(f"- {mark}: {meaning}\n" for mark, meaning in MEANINGS.items())
    + "Answer with ONLY a JSON object, no other text: {"
    + ", ".join(f'"{mark}": int' for mark in RUBRIC) + ', "comment": "one short sentence"}'
)


def judge_llm(items: list[dict], client: ChatClient, progress: bool = False) -> dict:
    """Grade `items` ({"id", "image": path|None, "text", "prompt": optional}) with `client`.

    Returns {"items": [{"id", "scores": {dim: int} | None, "comment", "error": str | None}],
             "mean": {dim: float} (empty if nothing was scored), "n_scored", "n_failed"}."""
    results = []
    for i, item in enumerate(items, 1):
        try:
            scores, comment = _judge_one(item, client)
            results.append({"id": item["id"], "scores": scores, "comment": comment, "error": None})
        except (TinyVLMError, ValueError) as e:
            results.append({"id": item["id"], "scores": None, "comment": None, "error": str(e)})
        if progress:
            r = results[-1]
            print(f"judge {i}/{len(items)} {r['id']}: {r['error'] or r['scores']}", file=sys.stderr)
    scored = [r["scores"] for r in results if r["scores"] is not None]
    mean = {d: fmean(s[d] for s in scored) for d in RUBRIC} if scored else {}
    return {"items": results, "mean": mean, "n_scored": len(scored), "n_failed": len(results) - len(scored)}


def _judge_one(item: dict, client: ChatClient) -> tuple[dict, str]:
    """Ask until the reply is a valid grade; the client already retries transport errors, so here
    only bad answers are retried (up to client.retries times), each time saying what was wrong."""
    text = f"The student's text:\n{item['text']}"
    if item.get("prompt"):
        text = f"The student was given this beginning: {item['prompt']}\n\n{text}"
    content = [{"type": "text", "text": text}]
    if item.get("image"):
        content.append(image_part(item["image"]))
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    for _ in range(client.retries + 1):
        reply = client.chat(messages, temperature=0.0, max_tokens=200)
        try:
            return validate_grade(parse_json_object(reply))
        except ValueError as e:
            reason = str(e)
            messages = messages[:2] + [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": f"That answer was invalid ({reason}). Reply with only the JSON object."}]
    raise ValueError(f"no valid grade after {client.retries + 1} replies; last problem: {reason}")


def validate_grade(obj: dict) -> tuple[dict, str]:
    """Check a parsed grade: every rubric field an int in 0..10, comment a string (may be missing)."""
    scores = {}
    for dim in RUBRIC:
        v = obj.get(dim)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10:
            raise ValueError(f"'{dim}' must be an integer 0-10, got {v!r}")
        scores[dim] = v
    comment = obj.get("comment", "")
    if not isinstance(comment, str):
        raise ValueError("'comment' must be a string")
    return scores, comment
