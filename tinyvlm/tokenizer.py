"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) trained on the training text, plus the one
function that turns (prompt, images, target) into a token sequence.

Special tokens have fixed ids so the model code can name them:
    0 <|pad|>   1 <|bos|>   2 <|eos|>   3 <|sep|> (prompt ends, answer begins)   4 <image>
A sequence is   <|bos|> prompt-with-image-slots <|sep|> target <|eos|>
and each <image> slot is expanded to the model's `image_tokens` copies of id 4.
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import TinyVLMError

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|sep|>", "<image>"]
PAD_ID, BOS_ID, EOS_ID, SEP_ID, IMAGE_ID = range(len(SPECIALS))


class Tokenizer:
    def __init__(self, tk: HFTokenizer):
        for i, tok in enumerate(SPECIALS):
            if tk.token_to_id(tok) != i:
                raise TinyVLMError(f"tokenizer is not a tinyvlm tokenizer: special token {tok} is not id {i}")
        self.tk = tk

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "Tokenizer":
        tk = HFTokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tk.train_from_iterator(texts, trainer)
        return cls(tk)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        try:
            return cls(HFTokenizer.from_file(os.fspath(path)))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise TinyVLMError(f"cannot read tokenizer {path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        self.tk.save(os.fspath(path))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_answer(self, text: str) -> list[int]:
        """Answer text starts with a space, so its first word gets the same token as that word
        mid-sentence (" purple", not "p" + "urple"); otherwise one-word answers would be spelled
        with rare pieces the model never links to the word it knows."""
        return self.encode(" " + text.strip()) if text.strip() else []

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([i for i in ids if i >= len(SPECIALS)]).strip()

    def encode_example(self, prompt: str, image_tokens: int, target: str | None = None,
                       prefix: str = "") -> tuple[list[int], int]:
        """Token ids of one example and the length of its prompt part (everything up to and
        including <|sep|> and the given `prefix` of the answer). With a target, the sequence ends
        in <|eos|>; without, it ends where generation should continue."""
        ids = [BOS_ID]
        for i in self.encode(prompt):
            ids.extend([IMAGE_ID] * image_tokens if i == IMAGE_ID else [i])
        ids.append(SEP_ID)
        ids.extend(self.encode_answer(prefix))
        n_prompt = len(ids)
        if target is not None:
            ids.extend(self.encode_answer(target) + [EOS_ID])
        return ids, n_prompt
