"""Words: the one word splitter, and the one table of description lengths.

Everything that counts, compares or checks words reads them through `words`, so "what a word is"
is written once. The readings below differ on purpose, each where the caller needs it; a caller
picks its reading by name, never by writing its own pattern.
"""
from __future__ import annotations

import re
from functools import lru_cache

# Words per description, as in the NanoVLMs paper's ShortDesc (20-25) and LongDesc (60-70): what the
# world writes and what an LLM rewrite of a photo's captions must hit.
LENGTHS = {"short": (20, 25), "long": (60, 70)}


def words(text: str, digits: bool = False, joiners: str = "") -> list[str]:
    """The lowercase words of `text`, in order, everything else dropped.

    - Letters only (the default): the picture-book world's grammar and checker, and caption-word
      concepts. Their vocabularies hold no digits, so "2 cats." -> ["cats"].
    - `digits=True`: where a number written in digits means something. Examples are a VQA answer
      ("2" is an answer) and grounding's reading of "2 cats". So "2 cats." -> ["2", "cats"].
    - `joiners`: characters that hold two parts of one word together, with digits counted as
      letters. Memorisation's ROUGE-L uses "'" ("dog's" is one token, as in the COCO toolkit's
      fallback). The rewrite's length and vocabulary check uses "'-", so "t-shirt" counts once.
    """
    return _pattern(digits or bool(joiners), joiners).findall(text.lower())


@lru_cache(maxsize=None)
def _pattern(digits: bool, joiners: str) -> re.Pattern:
    chars = "[a-z0-9]" if digits else "[a-z]"
    if not joiners:
        return re.compile(chars + "+")
    return re.compile(f"{chars}+(?:[{''.join(re.escape(c) for c in joiners)}]{chars}+)*")
