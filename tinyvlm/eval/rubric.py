"""The NanoVLMs paper's rubric: five marks, each out of 10, that every judge gives and every report shows.

This is the one table: the LLM judge's instructions, the grounded judge's marks, the report's
plots and the demo's summary all read it.
"""
from __future__ import annotations

# Each mark, and what a grader is told it means (the paper's five dimensions, in its order).
MEANINGS = {
    "grammar": "correct, fluent sentences",
    "consistency": "agrees with the picture and with itself, no contradictions",
    "creativity": "original, vivid wording",
    "meaningfulness": "makes sense and says something real about the picture",
    "plot": "a coherent flow from start to end",
}
RUBRIC = tuple(MEANINGS)
