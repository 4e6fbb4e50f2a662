"""The detector protocol: a per-prompt memorization score, its declared direction and what it needs.

A detector answers "does this prompt reproduce a training image?" with one number per prompt. It runs through the
one loop (:meth:`diffmem.subject.Subject.sample`, possibly on the first steps of the grid only), single denoiser
evaluations at chosen states (probes, JVPs, VJPs), and the one attention interface — never a loop of its own.

Conventions, shared by every detector and the harness:

* ``higher_is_memorized`` is *declared*; the harness negates the scores of a detector that declares False and never
  flips labels, so an AUC below 0.5 is a finding, not a bug;
* generation j of every prompt uses seed ``base_seed + j`` (order-invariant), so the n = 1 score uses the first
  generation of the n = 4 run;
* ε_c and ε_u are upcast to float32 (at least) before they are subtracted;
* a detector is a frozen dataclass: its fields are its parameters, and :meth:`Detector.describe` records them.

Register a new detector with :func:`register` in its own file and import that file in
:mod:`diffmem.detectors` (``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["Detector", "PerGeneration", "CrossGeneration", "REGISTRY", "register", "make_detector", "NEEDS",
           "repeat_cond", "generation_seeds", "eps_difference"]

# what a detector may need beyond a prompt and the model's forward pass
NEEDS = frozenset({"trajectory", "attention", "jvp", "vjp", "decode", "references", "paired_image",
                   "several_generations", "calibration"})

REGISTRY: dict[str, type[Detector]] = {}


@dataclass(frozen=True)
class Detector:
    """Base of every detector (a frozen dataclass whose fields are its parameters).

    Class attributes:
        name: registry key (stable: it appears in every result row).
        citation: the paper (first docstring line says the same).
        higher_is_memorized: the declared direction.
        needs: subset of :data:`NEEDS`.
        min_generations: the fewest generations its statistic is defined for (cross-seed statistics need 2).
        control: a control that should *fail* (complexity only): reported, never expected to separate.

    A detector that needs ``"calibration"`` is fitted first: :meth:`fit` returns a copy with its fitted fields set.
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    higher_is_memorized: ClassVar[bool] = True
    needs: ClassVar[frozenset] = frozenset()
    min_generations: ClassVar[int] = 1
    control: ClassVar[bool] = False

    def fit(self, subject: Subject, negative_prompts: Sequence[Prompt], seeds: Sequence[int]) -> Detector:
        """This detector calibrated on the generations ``seeds`` of non-memorized prompts (a detector that needs
        no calibration returns itself)."""
        if "calibration" in self.needs:  # pragma: no cover - interface
            raise NotImplementedError(f"detector {self.name!r} needs calibration but implements no fit")
        return self

    def score(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> np.ndarray:
        """One score per prompt [P] (float64, in the declared direction) from the generations ``seeds``."""
        raise NotImplementedError  # pragma: no cover - interface

    def describe(self) -> dict:
        """Provenance: name, citation, direction and every parameter."""
        return {"name": self.name, "citation": self.citation, "higher_is_memorized": self.higher_is_memorized,
                "params": asdict(self)}

    def check(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> None:
        """Refuse inputs the statistic is not defined for, naming what is missing."""
        if len(seeds) < self.min_generations:
            raise ValueError(f"detector {self.name!r} needs at least {self.min_generations} generations, got "
                             f"{len(seeds)}; use --n-gen {self.min_generations} or more")
        if "paired_image" in self.needs:
            missing = [p.id for p in prompts if p.x is None]
            if missing:
                raise ValueError(f"detector {self.name!r} needs each prompt's training image; prompt "
                                 f"{missing[0]!r} has none (drop it or choose a training-data-free detector)")
        if "references" in self.needs and subject.references is None:
            raise ValueError(f"detector {self.name!r} needs the training images (references) of {subject.name!r}")


@dataclass(frozen=True)
class PerGeneration(Detector):
    """A detector whose statistic is computed per generation and averaged over generations (Wen et al., 2024)."""

    batch_size: int = 64

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        """Scores [P, G] of each prompt and generation."""
        raise NotImplementedError  # pragma: no cover - interface

    def score(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> np.ndarray:
        self.check(subject, prompts, seeds)
        return self.score_generations(subject, prompts, seeds).double().mean(1).numpy()

    def batches(self, prompts: Sequence[Prompt], seeds: Sequence[int]):
        """(prompt indices [b], seeds [b]) of the flattened (prompt, generation) pairs, ``batch_size`` at a time."""
        pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
        for k in range(0, len(pairs), self.batch_size):
            chunk = pairs[k:k + self.batch_size]
            yield [i for i, _ in chunk], [s for _, s in chunk]

    def over_batches(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int],
                     statistic: Callable[..., Tensor], *, with_index: bool = False) -> Tensor:
        """Scores [P, G] (float64): ``statistic(cond, seeds)`` → [b] on each batch of (prompt, generation) pairs
        (``statistic(cond, seeds, prompt_indices)`` with ``with_index``)."""
        parts = []
        for index, batch_seeds in self.batches(prompts, seeds):
            args = (repeat_cond(subject, prompts, index), batch_seeds) + ((index,) if with_index else ())
            parts.append(statistic(*args).double().cpu())
        return torch.cat(parts).view(len(prompts), len(seeds))


@dataclass(frozen=True)
class CrossGeneration(Detector):
    """A detector whose statistic compares the generations of one prompt (defined for n ≥ 2).

    Attributes:
        batch_size: (prompt, generation) rows per run of the loop; whole prompts are kept together.
    """

    min_generations = 2
    batch_size: int = 64

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        """Scores [p] of a chunk of prompts, each from all its generations ``seeds``."""
        raise NotImplementedError  # pragma: no cover - interface

    def score(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> np.ndarray:
        self.check(subject, prompts, seeds)
        per = max(1, self.batch_size // len(seeds))
        chunks = [self.score_prompts(subject, prompts[k:k + per], seeds) for k in range(0, len(prompts), per)]
        return torch.cat(chunks).double().cpu().numpy()


def repeat_cond(subject: Subject, prompts: Sequence[Prompt], index: Sequence[int]) -> Cond:
    """The conditioning of ``prompts[i]`` for each i of ``index`` (one row per generation)."""
    return subject.cond([prompts[i] for i in index])


def generation_seeds(n: int, base_seed: int = 0) -> list[int]:
    """Seeds of generations 0 … n−1 of every prompt: ``base_seed + j``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of generations must be an int >= 1, got {n!r}")
    return [base_seed + j for j in range(n)]


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to :data:`REGISTRY` under its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"detector name {cls.name!r} is empty or already registered")
    if not cls.needs <= NEEDS:
        raise ValueError(f"detector {cls.name!r} declares unknown needs {sorted(cls.needs - NEEDS)}")
    REGISTRY[cls.name] = cls
    return cls


def make_detector(name: str, **params) -> Detector:
    """A registered detector by name with parameters, or a ValueError listing the names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**params)


def eps_difference(eps_c: Tensor, eps_u: Tensor) -> Tensor:
    """d_t = ε_c − ε_u in at least float32 (half-precision models lose the digits that separate prompts)."""
    dtype = torch.promote_types(eps_c.dtype, torch.float32)
    return eps_c.to(dtype) - eps_u.to(dtype)
