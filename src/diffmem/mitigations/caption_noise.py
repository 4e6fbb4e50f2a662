"""Caption and embedding perturbation at inference (Somepalli et al., NeurIPS 2023): GNI and random tokens.

* **GNI** (Gaussian noise on the text embedding): e ← e + λ·N(0, I) in *both* CFG branches (independent draws),
  every position, once before sampling. λ = 0 leaves the run bitwise unchanged.
* **RT** (random tokens): ``n_tokens`` words drawn from the vocabulary are inserted at random positions of the
  caption, which is re-encoded (:meth:`~diffmem.subject.Subject.encode`); only the conditional branch changes.

The draws of generation i come from a stream of its seed apart from its x_T stream, so a generation is reproducible
and independent of batching. Cost: none beyond encoding (no extra denoiser evaluation).

The vocabulary is the world tokenizer's words (or a ``vocabulary`` given), else the words of the subject's prompts.
A caption never grows past the tokenizer's length: a world tokenizer that fits fewer words gets fewer insertions (the
count actually inserted is what :func:`insert_random_words` returns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import (
    Replace,
    embedding,
    prompt_texts,
    row_generator,
    sample_with,
    with_embedding,
)
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.text.tokenizer import WordTokenizer, split_words
from diffmem.types import Cond

__all__ = ["EmbeddingNoise", "RandomTokens", "noisy_cond", "insert_random_words", "word_tokenizer"]

SOMEPALLI = ("Somepalli, Singla, Goldblum, Geiping & Goldstein, Understanding and Mitigating Copying in Diffusion "
             "Models, NeurIPS 2023")


def _noise_like(e: Tensor, seeds: Sequence[int], tag: str) -> Tensor:
    rows = [torch.randn(e.shape[1:], generator=row_generator(tag, s), dtype=torch.float64) for s in seeds]
    return torch.stack(rows).to(device=e.device, dtype=e.dtype)


def noisy_cond(cond: Cond, seeds: Sequence[int], sigma: float) -> Cond:
    """``cond`` with λ·N(0, I) added to e_p and to e_∅ (independent draws per row and branch)."""
    if len(seeds) != cond.batch_size:
        raise ValueError(f"got {len(seeds)} seeds for {cond.batch_size} conditioning rows")
    c = with_embedding(cond.c, embedding(cond.c) + sigma * _noise_like(embedding(cond.c), seeds, "gni-c"))
    if cond.null is None:
        return Cond(c)
    e_u = embedding(cond.null)
    return Cond(c, with_embedding(cond.null, e_u + sigma * _noise_like(e_u, seeds, "gni-u")))


def word_tokenizer(subject: Subject) -> WordTokenizer | None:
    """The world's word tokenizer behind ``subject.condition`` (a world's bound ``cond``), or None."""
    tok = getattr(getattr(subject.condition, "__self__", None), "tokenizer", None)
    return tok if isinstance(tok, WordTokenizer) else None


def _vocabulary(subject: Subject, given: Sequence[str]) -> list[str]:
    if given:
        return list(given)
    tok = word_tokenizer(subject)
    if tok is not None:
        return [w for w in tok.words if w.isalnum()]  # words, not punctuation
    words = sorted({w for p in subject.prompts for w in split_words(p.text) if w.isalnum()})
    if not words:
        raise ValueError(f"subject {subject.name!r} has no words to draw random tokens from; pass vocabulary=[...]")
    return words


def insert_random_words(text: str, n: int, vocabulary: Sequence[str], generator: torch.Generator,
                        max_words: int | None = None) -> tuple[str, int]:
    """(``text`` with up to ``n`` random vocabulary words at random positions, how many were inserted)."""
    words = split_words(text)
    n = n if max_words is None else max(0, min(n, max_words - len(words)))
    for _ in range(n):
        word = vocabulary[int(torch.randint(len(vocabulary), (1,), generator=generator))]
        words.insert(int(torch.randint(len(words) + 1, (1,), generator=generator)), word)
    return " ".join(words), n


@register
@dataclass(frozen=True)
class EmbeddingNoise(InferenceMitigation):
    """Gaussian noise on the text embedding (Somepalli et al., NeurIPS 2023, GNI): e ← e + λ·N(0, I), both branches.

    Attributes:
        sigma: λ (README 0.1).
    """

    name = "somepalli-gni"
    citation = SOMEPALLI
    knob = "sigma"
    grid = (0.05, 0.1, 0.2, 0.5, 1.0)  # 0.1 is the published value; the rest is our sweep around it
    sigma: float = 0.1

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        edited = noisy_cond(cond, seeds, self.sigma)
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(cond=edited, label=self.name))


@register
@dataclass(frozen=True)
class RandomTokens(InferenceMitigation):
    """Random-token insertion (Somepalli et al., NeurIPS 2023, RT): ``n_tokens`` random words in the caption.

    Attributes:
        n_tokens: words inserted (4 in the reference; MemBench 1).
        vocabulary: words to draw from (empty: the world tokenizer's words, else the subject's prompt words).

    ``sample`` takes ``texts=[...]`` (one per row); without it each row is matched to the subject's prompt with
    the same conditioning.
    """

    name = "somepalli-rt"
    citation = SOMEPALLI
    knob = "n_tokens"
    grid = (1, 2, 4, 6, 8)  # Han et al.'s sweep
    n_tokens: int = 4
    vocabulary: tuple[str, ...] = ()

    def captions(self, subject: Subject, texts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        """The perturbed caption of every row (row i drawn from seed i's stream)."""
        vocab, tok = _vocabulary(subject, self.vocabulary), word_tokenizer(subject)
        room = None if tok is None else tok.max_len - 2
        return [insert_random_words(t, self.n_tokens, vocab, row_generator("rt", s), room)[0]
                for t, s in zip(texts, seeds, strict=True)]

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, texts: Sequence[str] | None = None, **kwargs) -> Trajectory:
        new = subject.encode(self.captions(subject, prompt_texts(subject, cond, texts), seeds))
        edited = Cond(new.c, cond.null)  # the null branch stays the caller's
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(cond=edited, label=self.name))
