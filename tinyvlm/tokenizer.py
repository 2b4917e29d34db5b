"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) trained on the training text, and the one
chat template that turns a conversation with interleaved pictures into token ids.

Special tokens have fixed ids so the model code can name them:
    0 <|pad|>  1 <|bos|>  2 <|eos|> (an assistant turn ends)  3 <|assistant|>  4 <image>
    5 <|user|>  6 <|image_start|>  7 <|image_end|>

The chat template (docs/architecture.md#the-chat-template):

    <|bos|> <|user|> text <|image_start|> <image> x n <|image_end|> text <|assistant|> answer <|eos|>
            <|user|> ... <|assistant|> answer <|eos|> ...

- A user turn may hold `<image>` anywhere, any number of times; each is replaced by its picture's
  n image tokens (n may differ from picture to picture) between begin and end markers, so the
  decoder can tell where one picture ends and the next begins.
- Text is encoded piece by piece with a leading space, so "<image>Describe" and "<image> Describe"
  give the same ids, and an answer's first word gets the same token as mid-sentence (" purple",
  not "p" + "urple").
- What a user types never becomes a control token: "<|eos|>" in a caption is spelled out in bytes
  (`encode_special_tokens`), and only the template writes special ids.
- Only assistant turns (and the <|eos|> that ends each) carry a training loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import TinyVLMError

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|assistant|>", "<image>", "<|user|>", "<|image_start|>",
            "<|image_end|>"]
PAD_ID, BOS_ID, EOS_ID, ASSISTANT_ID, IMAGE_ID, USER_ID, IMAGE_START_ID, IMAGE_END_ID = range(len(SPECIALS))
IMAGE_SLOT = "<image>"  # where a picture goes in a user turn's text
IGNORE = -100  # label for positions that carry no loss (pictures, user turns, padding)
ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Encoded:
    """A conversation as ids. `learn[i]` is True where ids[i] is a token the model should learn to
    write (assistant text and the <|eos|> that closes it)."""
    ids: list[int]
    learn: list[bool]


class Tokenizer:
    def __init__(self, tk: HFTokenizer):
        for i, tok in enumerate(SPECIALS):
            if tk.token_to_id(tok) != i:
                raise TinyVLMError(f"tokenizer is not a tinyvlm/2 tokenizer: special token {tok} is not id {i} "
                                   "(models saved before the chat template need retraining)")
        tk.encode_special_tokens = True  # a user's "<|eos|>" is text, never the control token
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
            tk = HFTokenizer.from_file(os.fspath(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise TinyVLMError(f"cannot read tokenizer {path}: {e}") from None
        return cls(tk)

    def save(self, path: str | os.PathLike) -> None:
        self.tk.save(os.fspath(path))

    def to_str(self) -> str:
        """The tokenizer as tokenizer.json's text (how training processes share rank 0's)."""
        return self.tk.to_str()

    @classmethod
    def from_str(cls, text: str) -> "Tokenizer":
        return cls(HFTokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids, special-token strings included as ordinary text."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """A piece of a turn: stripped, then encoded after one space (see the module docstring)."""
        return self.encode(" " + text.strip()) if text.strip() else []

    def text_offsets(self, text: str) -> list[tuple[int, int]]:
        """For each id of `encode_text(text)`, the characters of `text.strip()` it covers (start,
        end), its leading space left out: which tokens spell which word (tinyvlm/explain)."""
        if not text.strip():
            return []
        enc = self.tk.encode(" " + text.strip(), add_special_tokens=False)
        return [(max(0, a - 1), max(0, b - 1)) for a, b in enc.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([i for i in ids if i >= len(SPECIALS)]).strip()

    def encode_conversation(self, turns: Sequence[tuple[str, str]], image_tokens: Sequence[int],
                            prefix: str | None = None) -> Encoded:
        """The chat template. `turns`: (role, text) pairs, role 'user' or 'assistant', alternating
        from a user turn; `image_tokens`: for each `<image>` slot in order, how many image tokens its
        picture gives. With `prefix` (a string, possibly empty) the conversation must end on a user
        turn, and the ids end with <|assistant|> and the prefix: where generation continues.
        Raises TinyVLMError when roles, slots and pictures do not match."""
        ids, learn, n_slot = [BOS_ID], [False], 0
        for k, (role, text) in enumerate(turns):
            if role != ROLES[k % 2]:
                raise TinyVLMError(f"turn {k + 1} is '{role}': turns must alternate user, assistant, ... "
                                   "starting with the user")
            if role == "assistant":
                body = self.encode_text(text) + [EOS_ID]
                ids += [ASSISTANT_ID] + body
                learn += [False] + [True] * len(body)
                continue
            ids.append(USER_ID)
            for j, piece in enumerate(text.split(IMAGE_SLOT)):
                if j:
                    if n_slot >= len(image_tokens):
                        raise TinyVLMError(f"the conversation has more {IMAGE_SLOT} slots than the "
                                           f"{len(image_tokens)} picture(s) given")
                    ids += [IMAGE_START_ID] + [IMAGE_ID] * image_tokens[n_slot] + [IMAGE_END_ID]
                    n_slot += 1
                ids += self.encode_text(piece)
            learn += [False] * (len(ids) - len(learn))
        if n_slot != len(image_tokens):
            raise TinyVLMError(f"{len(image_tokens)} picture(s) given but the conversation has {n_slot} "
                               f"{IMAGE_SLOT} slot(s): put one {IMAGE_SLOT} where each picture goes")
        if prefix is not None:
            if not turns or turns[-1][0] != "user":
                raise TinyVLMError("to generate, the conversation must end with a user turn")
            ids += [ASSISTANT_ID] + self.encode_text(prefix)
            learn += [False] * (len(ids) - len(learn))
        return Encoded(ids, learn)
