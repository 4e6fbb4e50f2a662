"""Noise-difference magnitude (Wen et al., ICLR 2024): memorized prompts pull ε_c far from ε_u from the first step.

m_t = ‖ε_c(x_t) − ε_u(x_t)‖₂ over the whole state of one generation, averaged over the steps [start, end) of the
guided trajectory and over generations. Three registered windows: the first step only (2 NFE per generation), the
first five steps, and all steps. The loop records d_t = m_t at every step, subtracted in float32 or wider, so the
statistic costs no more than the steps it reads: only the first ``end`` steps of the grid are run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, register, repeat_cond
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["NoiseDiffMagnitude", "NoiseDiffFirst5", "NoiseDiffAll"]


@register
@dataclass(frozen=True)
class NoiseDiffMagnitude(PerGeneration):
    """Noise-difference magnitude (Wen et al., ICLR 2024), first step: ‖ε_c − ε_u‖₂ at x_T.

    Attributes:
        start, end: the step window [start, end) of the ``steps``-step grid (``end`` None = every step).
        guidance: the CFG weight w of the trajectory the later steps follow.
        steps: grid length (None: the subject's default).
    """

    name = "wen-step1"
    citation = "Wen et al., Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024"
    higher_is_memorized = True
    needs = frozenset()
    start: int = 0
    end: int | None = 1
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        n = self.steps or subject.steps
        end = n if self.end is None else self.end
        if not 0 <= self.start < end <= n:
            raise ValueError(f"step window [{self.start}, {end}) does not fit a {n}-step grid")
        out = torch.empty(len(prompts) * len(seeds), dtype=torch.float64)
        k = 0
        for index, batch_seeds in self.batches(prompts, seeds):
            traj = subject.sample(repeat_cond(subject, prompts, index), batch_seeds, guidance=self.guidance,
                                  steps=n, first=end, recorder=Recorder(keep=()))
            out[k:k + len(index)] = traj.d_t[self.start:end].mean(0)
            k += len(index)
        return out.view(len(prompts), len(seeds))


@register
@dataclass(frozen=True)
class NoiseDiffFirst5(NoiseDiffMagnitude):
    """Noise-difference magnitude (Wen et al., ICLR 2024), mean over the first five steps."""

    name = "wen-steps5"
    end: int | None = 5


@register
@dataclass(frozen=True)
class NoiseDiffAll(NoiseDiffMagnitude):
    """Noise-difference magnitude (Wen et al., ICLR 2024), mean over every step of the guided trajectory."""

    name = "wen-all"
    needs = frozenset({"trajectory"})
    end: int | None = None
