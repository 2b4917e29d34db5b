"""Standard captioning metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) computed by the COCO toolkit
itself (`pycocoevalcap`), so numbers are comparable with published ones.

The toolkit's tokenizer and METEOR run Java. Without Java we still report BLEU, ROUGE-L and CIDEr
on a simple tokenizer and say so in the result, rather than failing.
"""
from __future__ import annotations

import shutil

from ..errors import TinyVLMError
from .memorisation import memorisation, rouge_l, simple_tokenize  # noqa: F401  (one home for ROUGE-L)


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                    use_java: bool | None = None) -> dict:
    """Score predictions {id: caption} against references {id: [captions]} (same ids).

    Returns {"BLEU-1".."BLEU-4", "METEOR" (if Java), "ROUGE-L", "CIDEr", "n": int,
             "tokenizer": "ptb" | "simple", "skipped": {metric: reason}}.
    `use_java=None` uses Java when `java` is on PATH; False forces the pure-Python path (faster)."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        raise TinyVLMError("caption metrics need pycocoevalcap: pip install 'tinyvlm[eval]'") from None
    ids = sorted(predictions)
    if set(ids) != set(references):
        raise TinyVLMError(f"predictions and references cover different ids "
                           f"({len(set(ids) - set(references))} without references, "
                           f"{len(set(references) - set(ids))} without a prediction)")
    if not ids or any(not references[i] for i in ids):
        raise TinyVLMError("caption metrics need at least one prediction and a reference for each")

    java = shutil.which("java") is not None if use_java is None else use_java
    skipped = {} if java else {"METEOR": "java not found on PATH" if use_java is None else "use_java=False"}
    res, gts = _tokenize(predictions, references, ids, java)
    result: dict = {"n": len(ids), "tokenizer": "ptb" if java else "simple", "skipped": skipped}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result.update({f"BLEU-{n}": float(b) for n, b in enumerate(bleu, 1)})
    if java:
        try:
            result["METEOR"] = _meteor(gts, res)
        except (OSError, ValueError) as e:  # Java present but the jar failed (memory, broken install)
            skipped["METEOR"] = f"METEOR failed: {e.__class__.__name__}: {e}"
    result["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    result["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return result


def _tokenize(predictions, references, ids, java: bool):
    """Both sides as {id: [space-joined tokens]}, the shape every pycocoevalcap scorer expects."""
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        # one Java start for both sides; newlines would split a caption into two tokenizer lines
        both = {("res", i): [{"caption": " ".join(predictions[i].split())}] for i in ids}
        both |= {("gts", i): [{"caption": " ".join(r.split())} for r in references[i]] for i in ids}
        out = PTBTokenizer().tokenize(both)
        res = {i: out[("res", i)] for i in ids}
        gts = {i: out[("gts", i)] for i in ids}
    else:
        res = {i: [" ".join(simple_tokenize(predictions[i]))] for i in ids}
        gts = {i: [" ".join(simple_tokenize(r)) for r in references[i]] for i in ids}
    return res, gts


def _meteor(gts, res) -> float:
    from pycocoevalcap.meteor.meteor import Meteor
    meteor = Meteor()
    try:
        return float(meteor.compute_score(gts, res)[0])
    finally:
        del meteor  # its __del__ stops the Java process now, not at interpreter exit
