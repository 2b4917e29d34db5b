"""Can a decoder learn to copy an invented name from its context, with no pictures at all? Binding
episodes in text: each shot names a kind in words ("What is this? cat") and answers with a
nonsense word bound to that kind for this episode only; the query names one of the two kinds again.
This is the copy that picture binding needs (an induction head: find the earlier shot with the same
key, write the word after it), minus the pictures, so it bounds what the picture version can do in
the same number of steps.

    python benchmarks/icl_copy.py --model runs/mini [--steps 1500] [--init] [--tokenizer syllables]
                                  [--words one-token] [--lr 1e-3] [--batch-size 16]
                                  [--format plain] [--plain-steps N] [--key first] [--save DIR]
                                  [--family operator]

Measured figures and what they bound: docs/icl.md, "The copy without pictures".

Trains mini's decoder (the model's config) on 2-way episodes of 1-8 shots, with the loss on the
answers the earlier shots determine (as tinyvlm/world/icl.py marks them), and prints, every
--every steps, on held-out words (tinyvlm.world.icl's held-out fifth) at 0/1/2/4/8 shots:
exact match (teacher-forced argmax of every token of the word and its <|eos|>: what greedy decoding
writes) and the forced choice between the two bound words (first token). `--init` starts from
the model's decoder weights, else from scratch; `--tokenizer syllables` swaps the model's
tokenizer for one trained on the episode text, whose vocabulary holds the syllables (tinyvlm.tokenizer.Tokenizer.train, same vocabulary size); `--words one-token` binds
words that are one token each (the held-out fifth by the same hash), so the copy is only the choice.
`recent` (1+ shots): how often the word it prefers is the last shot's word, whatever the key: a
model that copies the most recent answer scores 1.0, one that reads the key scores the share of
queries whose kind is the last shot's (0.48-0.53 on these episodes). `--format plain` drops the
chat template and the question ("cat dax <|eos|> dog wug <|eos|> cat"): each word follows its key
directly, the classic induction pattern; `--plain-steps N` trains the first N steps that way, then
in the chat template (a curriculum), scoring in the chat template throughout. `--key first` puts
the key before the question ("cat What is this?"), where a picture episode puts its picture
("<image> What is this?"), so the circuit the decoder learns spans what the picture one must.
`--save DIR` writes a whole model folder: the --model folder's encoder, connector, tokenizer and
concept head, with the decoder just trained in place of its own, ready for
`tinyvlm train --init DIR --freeze-encoder` on picture episodes (docs/icl.md). A DIR tinyvlm may
not replace (other files in it, a file, the --model folder itself) is refused before training.
`--family operator` teaches operator induction instead (VL-ICL's, in text): each shot is "3 ? 4"
-> the result of the operator (+, -, x) the episode drew, a >= b and digits 0-9 as the world's
operator pictures; the loss is on every answer but the first. It scores exact match, exact match
with the support answers shuffled among the support shots (must fall: it proves the model reads
them), and how often the answer is the result of some operator (a right sum under a wrong operator).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from tinyvlm.checkpoint import check_model_dir, resolve
from tinyvlm.config import VLMConfig
from tinyvlm.errors import TinyVLMError
from tinyvlm.model.decoder import Decoder
from tinyvlm.model.loss import weighted_cross_entropy
from tinyvlm.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from tinyvlm.world.icl import OPERATORS, QUESTIONS, _balanced, held_out_word, nonsense_word
from tinyvlm.world.scene import KINDS

SHOTS = (0, 1, 2, 4, 8)
SUMS = [(a, b) for a in range(10) for b in range(a + 1)]  # as the operator pictures: a >= b


def one_token_words(tok: Tokenizer) -> dict[bool, list[str]]:
    """The vocabulary's words that are one token each (a space and letters), split into training
    and held-out ones by the nonsense words' own hash: values for pure associative recall."""
    out = {False: [], True: []}
    for i in range(tok.vocab_size):
        w = tok.decode([i])
        if w.isalpha() and tok.encode_text(w) == [i] and w not in KINDS:
            out[held_out_word(w)].append(w)
    return out


def episode(rng: random.Random, k: int, held_out: bool, pool: dict | None = None, key_first: bool = False):
    """Turns of a text binding episode (k shots, then the query), which answers are learned, and
    the other bound word. Words are nonsense words, or with `pool` one-token words drawn from it.
    The key (a kind) follows the question, or with `key_first` comes before it, as a picture does."""
    kinds = rng.sample(sorted(KINDS), 2)
    words = rng.sample(pool[held_out], 2) if pool else [nonsense_word(rng, held_out)]
    while len(words) < 2:
        w = nonsense_word(rng, held_out)
        words += [w] if w != words[0] else []
    labels, q = _balanced(rng, k), rng.randrange(2)
    turns = []
    for c in labels + [q]:
        ask = f"{kinds[c]} {QUESTIONS['binding']}" if key_first else f"{QUESTIONS['binding']} {kinds[c]}"
        turns += [("user", ask), ("assistant", words[c])]
    learn = [c in labels[:i] for i, c in enumerate(labels + [q])]
    return turns, learn, words[1 - q]


def operator_episode(rng: random.Random, k: int, key_first: bool = False):
    """Turns of a text operator-induction episode: k shots "a ? b" -> the result of one operator
    (+, -, x; a >= b, digits 0-9, as tinyvlm.world.icl's pictures), then the query; which answers
    are learned (all but the first: one shot already implies an operator), and the query's
    results under every operator (to tell a wrong operator from a wrong sum)."""
    op = rng.choice(sorted(OPERATORS))
    turns = []
    for _ in range(k + 1):
        a, b = rng.choice(SUMS)
        ask = f"{a} ? {b} {QUESTIONS['operator']}" if key_first else f"{QUESTIONS['operator']} {a} ? {b}"
        turns += [("user", ask), ("assistant", str(OPERATORS[op](a, b)))]
    return turns, [i > 0 for i in range(k + 1)], {str(f(a, b)) for f in OPERATORS.values()}


def make_episode(family: str, rng: random.Random, k: int, held_out: bool, pool: dict | None, key_first: bool):
    if family == "operator":
        return operator_episode(rng, k, key_first)
    return episode(rng, k, held_out, pool, key_first)


def shuffled(rng: random.Random, turns: list) -> list:
    """The support answers deranged among the support shots (every answer moves to another shot;
    the query keeps its own). Like the eval suite's baseline (Episode.shuffled), but a derangement
    of places, not of values: a shot may get an equal answer from another. The figures in
    docs/icl.md were measured with this one; move to Episode.shuffled when they are run again."""
    answers = [t[1] for t in turns[1:-2:2]]
    order = list(range(len(answers)))
    for _ in range(100):
        rng.shuffle(order)
        if len(order) < 2 or all(i != j for i, j in enumerate(order)):
            break
    out = list(turns)
    for i, j in enumerate(order):
        out[2 * i + 1] = ("assistant", answers[j])
    return out


def encode(tok: Tokenizer, turns, learn, plain: bool = False) -> tuple[list[int], list[float]]:
    """ids and a loss weight a token: 1 on the tokens of learned answers (and their <|eos|>). With
    `plain`, no chat template and no question: "<|bos|> cat dax <|eos|> dog wug <|eos|> cat", so
    each answer follows its key directly (the classic induction pattern, key -> next token)."""
    if plain:
        ids, weights = [BOS_ID], [0.0]
        for (_, key), (_, word), lrn in zip(turns[::2], turns[1::2], learn):
            for question in QUESTIONS.values():
                key = key.replace(question, "")
            k = tok.encode_text(" " + key.strip())
            w = tok.encode_text(word) + [EOS_ID]
            ids += k + w
            weights += [0.0] * len(k) + [float(lrn)] * len(w)
        return ids, weights
    enc = tok.encode_conversation(turns, [])
    weights, answer = [], -1
    for i, (t, lrn) in enumerate(zip(enc.ids, enc.learn)):
        if lrn and (i == 0 or not enc.learn[i - 1]):
            answer += 1
        weights.append(float(lrn and learn[answer]))
    return enc.ids, weights


def batch(rows):
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), PAD_ID)
    w = torch.zeros(len(rows), T)
    for r, (i, ww) in enumerate(rows):
        ids[r, :len(i)] = torch.tensor(i)
        w[r, :len(ww)] = torch.tensor(ww)
    return ids, w


def logits_of(dec: Decoder, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1])[None].expand_as(ids)
    h, _ = dec(dec.tok(ids), pos)  # right padding: causal attention never sees it
    return dec.head(h)


def evaluate(dec: Decoder, tok: Tokenizer, n: int, pool: dict | None, held_out: bool = True,
             plain: bool = False, key_first: bool = False, family: str = "binding") -> dict:
    """Held-out words (or training ones), the same episodes cut to each shot count, three figures a
    shot count. Binding: exact match, forced choice, recent. Operator: exact match, exact match
    with the support answers shuffled, and how often the answer is some operator's result."""
    dec.eval()
    out = {}
    with torch.no_grad():
        for k in SHOTS:
            rng, mix = random.Random(f"icl-copy-eval:{k}"), random.Random(f"icl-copy-shuffle:{k}")
            exact = choice = recent = 0
            for _ in range(n):
                turns, _, other = make_episode(family, rng, k, held_out, pool, key_first)
                pred, lg, start, true_ans = _answer(dec, tok, turns, plain)
                exact += pred == true_ans
                if family == "operator":  # choice: with shuffled support; recent: some operator's result
                    choice += _answer(dec, tok, shuffled(mix, turns), plain)[0] == true_ans
                    recent += tok.decode(pred[:-1]).strip() in other
                    continue
                first_other = tok.encode_text(other)[0]
                picks_true = bool(lg[start - 1, true_ans[0]] > lg[start - 1, first_other])
                choice += picks_true
                if k:  # does it prefer the word of the last shot, whatever the key?
                    recent += (turns[-1][1] if picks_true else other) == turns[-3][1]
            out[k] = (exact / n, choice / n, recent / n if k or family == "operator" else float("nan"))
    dec.train()
    return out


def _answer(dec: Decoder, tok: Tokenizer, turns, plain: bool):
    """The query answer's teacher-forced argmax tokens (what greedy decoding writes while it is
    right), the logits, where the answer starts, and the true answer's tokens with <|eos|>."""
    ids, _ = encode(tok, turns, [True] * (len(turns) // 2), plain)
    true_ans = tok.encode_text(turns[-1][1]) + [EOS_ID]
    start = len(ids) - len(true_ans)
    lg = logits_of(dec, torch.tensor([ids]))[0]
    return lg[start - 1:len(ids) - 1].argmax(-1).tolist(), lg, start, true_ans


def syllable_tokenizer(vocab_size: int) -> Tokenizer:
    """A BPE trained on the episodes' own text (training words, kinds, question), so its vocabulary
    holds the syllables: the tokenizer a model trained with its episodes from the start would get."""
    rng = random.Random("icl-copy-tokenizer")
    words = [nonsense_word(rng, False) for _ in range(20000)]
    texts = [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
    return Tokenizer.train(texts + [" ".join(sorted(KINDS)) + " " + QUESTIONS["binding"]] * 50, vocab_size)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a model folder: its decoder config and tokenizer")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--n", type=int, default=100, help="held-out episodes a shot count")
    ap.add_argument("--max-shots", type=int, default=8)
    ap.add_argument("--init", action="store_true", help="start from the model's decoder weights")
    ap.add_argument("--tokenizer", choices=("model", "syllables"), default="model")
    ap.add_argument("--words", choices=("nonsense", "one-token"), default="nonsense",
                    help="bind nonsense words, or words of the vocabulary that are one token each (the copy "
                         "reduced to choosing: associative recall)")
    ap.add_argument("--eval-training-words", action="store_true",
                    help="score on the training words (fresh episodes) instead of held-out ones: is a "
                         "failure on held-out words a failure to copy, or words learned in the weights?")
    ap.add_argument("--format", choices=("chat", "plain"), default="chat",
                    help="episodes in the chat template, or plain 'key word <|eos|>' text where each word follows its key")
    ap.add_argument("--plain-steps", type=int, default=0,
                    help="a curriculum: train the first N steps on plain text, then in --format (scored in --format throughout)")
    ap.add_argument("--key", choices=("last", "first"), default="last",
                    help="in the chat template, the key after the question, or before it (where a picture goes)")
    ap.add_argument("--save", metavar="DIR",
                    help="write a model folder: --model's, with the decoder trained here in place of its own")
    ap.add_argument("--family", choices=("binding", "operator"), default="binding",
                    help="binding of invented names, or operator induction ('3 ? 4' -> the result of the "
                         "operator the shots imply; scored exact / shuffled support / some operator's result)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.family == "operator" and (a.words != "nonsense" or a.eval_training_words):
        ap.error("--words and --eval-training-words are binding's: operator episodes have no invented words")
    if a.save and (a.tokenizer != "model" or a.words != "nonsense"):
        ap.error("--save keeps the model's tokenizer and vocabulary: use it with --tokenizer model --words nonsense")
    torch.manual_seed(a.seed)
    src = resolve(a.model)  # a model folder, or a training run's latest checkpoint
    if a.save:  # refused before training, not after it
        if Path(a.save).resolve() in (Path(a.model).resolve(), Path(src).resolve()):
            raise TinyVLMError(f"--save {a.save} is the --model folder it reads: choose a new folder")
        check_model_dir(a.save)
    cfg = VLMConfig.from_dict(json.loads(Path(src, "config.json").read_text())["model"])
    tok = Tokenizer.load(Path(src, "tokenizer.json"))
    if a.tokenizer == "syllables":
        tok = syllable_tokenizer(cfg.lm_vocab_size)
    dec = Decoder(cfg)
    if a.init:
        from safetensors.torch import load_file
        sd = load_file(str(Path(src, "model.safetensors")))
        dec.load_state_dict({k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")})
    pool = one_token_words(tok) if a.words == "one-token" else None
    rng = random.Random(f"icl-copy-train:{a.seed}")
    sample = make_episode(a.family, rng, 4, False, pool, False)[0]
    print(f"# {a.family}; tokenizer {a.tokenizer}: '{sample[1][1]}' -> {len(tok.encode_text(sample[1][1]))} tokens; "
          f"words {a.words}{f' ({len(pool[False])} + {len(pool[True])} held out)' if pool else ''}; "
          f"init={'model' if a.init else 'scratch'}; lr {a.lr}; batch {a.batch_size}")
    opt = torch.optim.AdamW(dec.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
    figures = "exact / shuffled / some op." if a.family == "operator" else "exact / choice / recent"
    print("| step | seconds | loss | " + " | ".join(f"{k}-shot {figures}" for k in SHOTS) + " |")
    t0, losses, key_first = time.time(), [], a.key == "first"
    for step in range(a.steps + 1):
        if step % a.every == 0:
            ev = evaluate(dec, tok, a.n, pool, not a.eval_training_words, a.format == "plain", key_first, a.family)
            loss = sum(losses) / max(1, len(losses))
            print(f"| {step} | {time.time() - t0:.0f} | {loss:.3f} | "
                  + " | ".join(f"{e:.2f} / {c:.2f} / {r:.2f}" for e, c, r in ev.values()) + " |", flush=True)
            losses = []
        if step == a.steps:
            break
        plain = a.format == "plain" or step < a.plain_steps
        ids, w = batch([encode(tok, *make_episode(a.family, rng, rng.randint(1, a.max_shots), False, pool, key_first)[:2],
                               plain) for _ in range(a.batch_size)])
        h, _ = dec(dec.tok(ids[:, :-1]), torch.arange(ids.shape[1] - 1)[None].expand(ids.shape[0], -1))
        keep = w[:, 1:] > 0
        loss = weighted_cross_entropy(dec.head(h[keep]), ids[:, 1:][keep], w[:, 1:][keep]) / keep.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    if a.save:
        print(f"# saved {save_with_decoder(a.model, dec, a.save)}")


def save_with_decoder(model: str, dec: Decoder, out: str) -> Path:
    """The model folder `model` with `dec` in place of its decoder, written atomically to `out`.
    Its figures and tasks (the old decoder's) are dropped; encoder, connector, tokenizer and
    concept head are kept, so picture ICL tuning can start from it with --init and --freeze-encoder."""
    from tinyvlm import TinyVLM
    vlm = TinyVLM.from_pretrained(model)
    vlm.model.decoder.load_state_dict(dec.state_dict())
    vlm.figures, vlm.training, vlm.tasks = {}, None, None  # all measured or taught with the old decoder
    return vlm.save_pretrained(out)


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:
        raise SystemExit(f"icl_copy: {e}")
