"""A word-level tokenizer with BOS/EOS/padding, built offline from the world's own captions.

CLIP's conventions, at word level (Radford et al., 2021): every prompt is ``<bos> w_1 … w_n <eos>`` padded with
``<pad>`` to ``max_len``; the attention mask marks ``<bos>`` … ``<eos>``. The empty prompt ``""`` is ``<bos> <eos>``
and is the null condition of classifier-free guidance. Words outside the vocabulary map to ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["WordTokenizer", "split_words", "SPECIALS"]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words (letters, digits, inner ' or -) and single punctuation marks.

    Example:
        >>> split_words("A bold Seven, leaning-left!")
        ['a', 'bold', 'seven', ',', 'leaning-left', '!']
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {text!r}")
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """Word vocabulary (after the four specials) and a fixed sequence length.

    Example:
        >>> tok = WordTokenizer(("bold", "seven"), max_len=5)
        >>> ids, mask = tok.encode(["bold seven", ""])
        >>> ids.tolist(), mask.sum(1).tolist(), tok.decode(ids)
        ([[1, 4, 5, 2, 0], [1, 2, 0, 0, 0]], [4, 2], ['bold seven', ''])
    """

    words: tuple[str, ...]
    max_len: int = 16

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __post_init__(self):
        if len(set(self.words)) != len(self.words) or set(self.words) & set(SPECIALS):
            raise ValueError("tokenizer words must be distinct and must not contain the special tokens")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 2:
            raise ValueError(f"max_len must be an int >= 2 (room for <bos> and <eos>), got {self.max_len!r}")
        object.__setattr__(self, "_ids", {w: i + len(SPECIALS) for i, w in enumerate(self.words)})

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, max_len: int | None = None) -> WordTokenizer:
        """Vocabulary of all words in ``texts`` (most frequent first, ties alphabetical); ``max_len`` defaults to
        the longest text plus <bos> and <eos>."""
        counts, longest = Counter(), 0
        for text in texts:
            words = split_words(text)
            counts.update(words)
            longest = max(longest, len(words))
        vocab = tuple(sorted(counts, key=lambda w: (-counts[w], w)))
        return cls(vocab, max_len=max_len if max_len is not None else longest + 2)

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def token_ids(self, text: str) -> list[int]:
        """``<bos>`` + word ids + ``<eos>``, unpadded."""
        words = split_words(text)
        if len(words) + 2 > self.max_len:
            raise ValueError(f"prompt {text!r} has {len(words)} words; at most {self.max_len - 2} fit")
        return [self.bos_id, *(self._ids.get(w, self.unk_id) for w in words), self.eos_id]

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids [B, max_len] int64, attention mask [B, max_len] bool: True from <bos> to <eos>)."""
        if isinstance(texts, str):
            raise ValueError(f"encode takes a sequence of prompts, got the string {texts!r}")
        ids = torch.full((len(texts), self.max_len), self.pad_id, dtype=torch.int64)
        for row, text in enumerate(texts):
            toks = self.token_ids(text)
            ids[row, :len(toks)] = torch.tensor(toks)
        return ids, ids != self.pad_id

    def decode(self, ids: Tensor) -> list[str]:
        """Words between <bos> and <eos> joined by single spaces (``<unk>`` stays visible)."""
        vocab = (*SPECIALS, *self.words)
        out = []
        for row in ids.tolist():
            words = []
            for i in row:
                if i == self.eos_id or i == self.pad_id:
                    break
                if i != self.bos_id:
                    words.append(vocab[i])
            out.append(" ".join(words))
        return out

    def tokens(self, text: str) -> list[str]:
        """The token strings of one prompt, specials included (for token-attribution displays)."""
        vocab = (*SPECIALS, *self.words)
        return [vocab[i] for i in self.token_ids(text)]

    def to_dict(self) -> dict:
        return {"words": list(self.words), "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        return cls(tuple(d["words"]), max_len=int(d["max_len"]))
