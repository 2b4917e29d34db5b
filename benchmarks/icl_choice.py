"""Does a model read its shots, even where greedy decoding says nothing? A two-way forced choice on
binding episodes: the model's log-probability of the query's true invented name against the other
name the shots bound, at each shot count, with the support answers in place and shuffled.

    python benchmarks/icl_choice.py --model RUN --data EPISODES [--shots 1,2,4,8] [--n 100]

Why: exact match needs every piece of a nonsense word right (they are 3-5 tokens each), so it reads
0 until copying works end to end. The choice reads 0.5 for a model that ignores its shots and
moves as soon as the shots tilt it toward the right word. It also splits the log-odds into the
word's first token (which word: the binding) and the rest (finishing a word already begun: copying).
"""
from __future__ import annotations

import argparse
import json
import random

from tinyvlm.api import TinyVLM
from tinyvlm.data.batches import Example
from tinyvlm.eval.icl import load_episodes


def example(e, answer: str, upto_first_token: int | None = None, tok=None) -> Example:
    turns = e.turns()[:-1]
    if upto_first_token:  # only the first token of the answer: the binding decision alone
        answer = tok.decode(tok.encode_text(answer)[:upto_first_token])
    *history, (_, prompt) = turns
    learn = tuple([False] * len(e.support) + [True])
    return Example(e.images(), prompt, answer, tuple(history), learn)


def choice(vlm: TinyVLM, episodes, first_only: bool) -> float:
    """Share of episodes whose true name the model rates above the other bound name."""
    exs = []
    for e in episodes:
        other = next(s.answer for s in e.support if s.answer != e.query.answer) if len({s.answer for s in e.support}) > 1 \
            else e.meta["choices"][1 - e.meta["choices"].index(e.query.answer)]
        for a in (e.query.answer, other):
            exs.append(example(e, a, 1 if first_only else None, vlm.tokenizer))
    lp = vlm.logprob(exs, batch_size=16)
    return sum(lp[2 * i] > lp[2 * i + 1] for i in range(len(episodes))) / len(episodes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--shots", default="1,2,4,8")
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    vlm = TinyVLM.from_pretrained(a.model)
    rows = []
    for k in (int(x) for x in a.shots.split(",")):
        eps = [e for e in load_episodes(a.data, k, a.n, 0) if e.family == "binding"]
        rng = random.Random(k)
        shuffled = [e.shuffled(rng) for e in eps]
        row = {"shots": k, "n": len(eps), "choice": choice(vlm, eps, False), "first_token": choice(vlm, eps, True),
               "choice_shuffled": choice(vlm, shuffled, False)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| shots | n | choice (whole word) | choice (first token) | shuffled support |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shots']} | {r['n']} | {r['choice']:.3f} | {r['first_token']:.3f} | {r['choice_shuffled']:.3f} |")


if __name__ == "__main__":
    main()
