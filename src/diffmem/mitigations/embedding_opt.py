"""Prompt-embedding optimization (Wen et al., ICLR 2024): lower ‖ε_c − ε_u‖ at the first step, then sample.

Before sampling, the conditional text embedding e_p (every position; the BOS gradient zeroed, e_∅ fixed) is a leaf;
each AdamW iteration is one guided evaluation at (x_T, t₀) and one backward of L = ‖ε_c(x_T, e_p) − ε_u(x_T, e_∅)‖₂.
A generation stops once its L ≤ ``target_loss`` or after ``max_steps`` iterations; it is then sampled with plain CFG
from the same x_T and the optimized e_p. Unlike the reference, which optimizes one embedding per batch of
generations, every generation has its own e_p, so the result does not depend on batching.

The published targets (3 to 7) are magnitudes of SD 1.4's 4×64×64 latents; they do not transfer to another model
and must be recalibrated (e.g. on the general set's first-step magnitudes). Cost: at most ``max_steps`` guided
evaluations with a backward (2 VJP rows each) per generation, before the usual 2 NFE per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import (
    FirstStep,
    Replace,
    descend_embedding,
    embedding,
    first_step,
    guidance_gap,
    sample_with,
    with_embedding,
)
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond, index_cond

__all__ = ["WenEmbedding", "optimize_embedding"]

WEN = ("Wen, Liu, Chen & Lyu, Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024")


def optimize_embedding(subject: Subject, cond: Cond, start: FirstStep, *, lr: float, max_steps: int,
                       target_loss: float, weight_decay: float = 0.01) -> tuple[Cond, Tensor]:
    """(the conditioning with optimized e_p, the loss of each iteration [max_steps, B], NaN after a row stopped).

    Every iteration evaluates L on the rows still running, stops those with L ≤ ``target_loss`` and takes one
    AdamW step on the others (Wen et al., ICLR 2024, with the BOS position frozen)."""
    if cond.null is None:
        raise ValueError("prompt-embedding optimization needs the null branch (ε_u) of the conditioning")
    e0 = embedding(cond.c)

    def loss(leaf: Tensor, rows: Tensor) -> Tensor:
        c = Cond(with_embedding(index_cond(cond.c, rows), leaf.to(e0.dtype)), index_cond(cond.null, rows))
        return guidance_gap(subject.denoiser(start.x_T[rows].detach(), start.t, c))

    return descend_embedding(cond, e0, loss, lr=lr, max_steps=max_steps, target=target_loss,
                             weight_decay=weight_decay)


@register
@dataclass(frozen=True)
class WenEmbedding(InferenceMitigation):
    """Prompt-embedding optimization (Wen et al., ICLR 2024): AdamW on e_p until ‖ε_c − ε_u‖ at x_T is small.

    Attributes:
        target_loss: stop a generation once its first-step ‖ε_c − ε_u‖ is at or below this (model-specific).
        lr: AdamW learning rate (reference 0.05); weight_decay: torch's AdamW default.
        max_steps: iterations at most (reference 10).
    """

    name = "wen-embedding"
    citation = WEN
    knob = "target_loss"
    grid = (3.0, 4.0, 5.0, 6.0, 7.0)  # SD 1.4 (Han et al.'s sweep); 3 = README, 5 = MemBench
    target_loss: float = 5.0
    lr: float = 0.05
    max_steps: int = 10
    weight_decay: float = 0.01

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        start = first_step(subject, seeds, steps)
        edited, _ = optimize_embedding(subject, cond, start, lr=self.lr, max_steps=self.max_steps,
                                       target_loss=self.target_loss, weight_decay=self.weight_decay)
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(cond=edited, label=self.name))
