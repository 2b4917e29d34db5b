"""Does the model write new sentences or recite its training data? (NanoVLMs paper, section 4.)

For each output we find the training text with the highest ROUGE-L. Comparing every output with
every training text is 50 million LCS computations for a modest run, so candidates are shortlisted
first: an inverted index (a sparse word x text matrix) counts the distinct words each training text
shares with the output, a cheap ROUGE-like score ranks them, and exact ROUGE-L runs on the top k.
"""
from __future__ import annotations


import torch

from ..text import words

ROUGE_BETA = 1.2  # pycocoevalcap's Rouge uses 1.2, so our numbers match the COCO toolkit's


def simple_tokenize(text: str) -> list[str]:
    """Lowercase words with punctuation dropped (the fallback when Stanford's PTB tokenizer is not
    available): "A dog's ball." -> ["a", "dog's", "ball"]."""
    return words(text, joiners="'")


def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence of two token lists, bit-parallel (Hyyro 2004): one pass over `b`
    with big-integer ops instead of a len(a) x len(b) table, so it is fast in pure Python."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _f_measure(overlap, len_candidate, len_reference):
    """ROUGE-L's F with beta 1.2 (recall weighted more); works on floats and tensors alike."""
    prec, rec = overlap / len_candidate, overlap / len_reference
    return (1 + ROUGE_BETA ** 2) * prec * rec / (rec + ROUGE_BETA ** 2 * prec)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of two sentences on `simple_tokenize` tokens (1.0 = identical)."""
    return rouge_l_tokens(simple_tokenize(candidate), simple_tokenize(reference))


def rouge_l_tokens(candidate: list[str], reference: list[str]) -> float:
    lcs = lcs_length(candidate, reference)
    return float(_f_measure(lcs, len(candidate), len(reference))) if lcs else 0.0


def memorisation(outputs: list[str], training_texts: list[str], k_candidates: int = 50,
                 batch_size: int = 128) -> list[dict]:
    """For each output, its nearest training text by ROUGE-L: [{"rouge_l": float, "nearest": str}].
    ROUGE-L 1.0 means the output was copied from the training data."""
    if not training_texts:
        return [{"rouge_l": 0.0, "nearest": ""} for _ in outputs]
    vocab: dict[str, int] = {}
    train_tokens = [simple_tokenize(t) for t in training_texts]
    rows, cols = [], []
    for i, toks in enumerate(train_tokens):
        for w in set(toks):
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    index = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                    torch.ones(len(rows)), (len(training_texts), len(vocab)),
                                    check_invariants=True).coalesce()
    train_distinct = torch.tensor([max(1, len(set(t))) for t in train_tokens], dtype=torch.float32)
    k = min(k_candidates, len(training_texts))

    results = []
    for start in range(0, len(outputs), batch_size):
        batch = [simple_tokenize(o) for o in outputs[start:start + batch_size]]
        query = torch.zeros(len(vocab), len(batch))
        for j, toks in enumerate(batch):
            query[[vocab[w] for w in set(toks) if w in vocab], j] = 1
        shared = torch.sparse.mm(index, query)  # (n_train, batch): distinct words in common
        out_distinct = torch.tensor([max(1, len(set(t))) for t in batch], dtype=torch.float32)
        approx = _f_measure(shared, out_distinct[None, :], train_distinct[:, None]).nan_to_num(0.0)  # 0/0: no overlap
        shortlist = approx.topk(k, dim=0).indices.T.tolist()
        for toks, candidates in zip(batch, shortlist):
            score, best = max((rouge_l_tokens(toks, train_tokens[i]), -i) for i in candidates)
            results.append({"rouge_l": score, "nearest": training_texts[-best]})
    return results
