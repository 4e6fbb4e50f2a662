"""Initial-noise adjustment (Han et al., NeurIPS 2025): start from an x_T that leaves the attraction basin early.

An x_T with a small first-step guidance gap ‖ε̃(x_T)‖, ε̃ = ε_c − ε_u, leaves the basin earlier, so guidance can
act from an earlier step and alignment is kept.

* **batch-wise** (no backprop): M times, δ = ρ·ε̃/‖ε̃‖ and x_T ← x_T − γ·[ε̃(x_T + δ) − ε̃(x_T)] (a SAM-like
  sharpness step); then sample with weight 0 (ε_u) while t > τ and the caller's CFG weight once t ≤ τ. Cost: 2M
  guided evaluations (4M NFE rows) per generation.
* **per-sample**: x_T a leaf, AdamW (weight decay 0.01, an implicit χ-norm prior) on ‖ε̃(x_T, t₀)‖ until it is at
  or below ``target_loss``; then full CFG from the first step. Cost: per iteration one guided evaluation with a
  backward (2 VJP rows) per generation still running.

ρ, γ and the targets are in SD latent units (4×64×64); on another model they must be recalibrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import eps_difference
from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import FirstStep, Replace, descend, first_step, guidance_gap, sample_with
from diffmem.sampling.guidance import StaticTransition
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond

__all__ = ["HanBatchwise", "HanPerSample", "batchwise_x_T", "optimize_x_T"]

HAN = ("Han et al., Adjusting Initial Noise to Mitigate Memorization in Text-to-Image Diffusion Models, "
       "NeurIPS 2025")


def _gap_direction(subject: Subject, x: Tensor, start: FirstStep, cond: Cond) -> Tensor:
    with torch.no_grad():
        pred = subject.denoiser(x, start.t, cond)
    return eps_difference(pred.eps_c, pred.eps_u)


def batchwise_x_T(subject: Subject, cond: Cond, start: FirstStep, *, gamma: float, rho: float,
                  iterations: int) -> Tensor:
    """x_T after ``iterations`` sharpness steps x ← x − γ·[ε̃(x + ρ·ε̃/‖ε̃‖) − ε̃(x)] (Han et al., batch-wise)."""
    x = start.x_T
    for _ in range(iterations):
        d = _gap_direction(subject, x, start, cond)
        unit = d / d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny).view(-1, *[1] * (d.ndim - 1))
        d_far = _gap_direction(subject, x + (rho * unit).to(x.dtype), start, cond)
        x = x - (gamma * (d_far - d)).to(x.dtype)
    return x


def optimize_x_T(subject: Subject, cond: Cond, start: FirstStep, *, lr: float, target_loss: float, max_steps: int,
                 weight_decay: float = 0.01) -> tuple[Tensor, Tensor]:
    """(adjusted x_T, ‖ε̃‖ at each iteration [max_steps, B], NaN after a row stopped) (Han et al., per-sample)."""
    def loss(leaf: Tensor, rows: Tensor) -> Tensor:
        return guidance_gap(subject.denoiser(leaf.to(start.x_T.dtype), start.t, cond.select(rows)))

    x, losses = descend(start.x_T, loss, lr=lr, max_steps=max_steps, target=target_loss, weight_decay=weight_decay)
    return x.to(start.x_T.dtype), losses


def _weight(guidance) -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ValueError(f"this remedy sets its own guidance schedule; pass the CFG weight as a number, got "
                         f"{guidance!r}")
    return float(guidance)


@register
@dataclass(frozen=True)
class HanBatchwise(InferenceMitigation):
    """Batch-wise initial-noise adjustment (Han et al., NeurIPS 2025): sharpness steps on x_T, then late CFG.

    Attributes:
        tau: the caller's CFG weight applies once t ≤ τ (model timesteps; SD 1.4: 900); weight 0 before.
        gamma, rho, iterations: γ̃, ρ and M of the adjustment (SD 1.4: 0.7, 50, 2; SD 2.0: 0.7, 30, 4).
    """

    name = "han-batchwise"
    citation = HAN
    knob = "tau"
    grid = (900.0, 917.449)  # SD 1.4 and SD 2.0 settings
    tau: float = 900.0
    gamma: float = 0.7
    rho: float = 50.0
    iterations: int = 2

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        w = _weight(guidance)
        if cond.null is None:
            raise ValueError("initial-noise adjustment needs the null branch (ε_u) of the conditioning")
        start = first_step(subject, seeds, steps)
        x_T = batchwise_x_T(subject, cond, start, gamma=self.gamma, rho=self.rho, iterations=self.iterations)
        return sample_with(subject, cond, seeds, guidance=StaticTransition(w=w, tau=self.tau, w1=0.0), steps=steps,
                           kwargs=kwargs, edit=Replace(x_T=x_T, label=self.name))


@register
@dataclass(frozen=True)
class HanPerSample(InferenceMitigation):
    """Per-sample initial-noise adjustment (Han et al., NeurIPS 2025): AdamW on x_T until ‖ε̃(x_T)‖ ≤ target.

    Attributes:
        target_loss: l_target (SD 1.4 grid 0.7–1.5, 0.9 in the appendix table; SD 2.0: 5–20).
        lr: AdamW rate on x_T (SD 1.4 0.01; SD 2.0 0.1); weight_decay 0.01.
        max_steps: iterations at most (our cap; the reference runs until the target is met).
    """

    name = "han-per-sample"
    citation = HAN
    knob = "target_loss"
    grid = (0.7, 0.9, 1.1, 1.3, 1.5)  # SD 1.4
    target_loss: float = 0.9
    lr: float = 0.01
    max_steps: int = 20
    weight_decay: float = 0.01

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        if cond.null is None:
            raise ValueError("initial-noise adjustment needs the null branch (ε_u) of the conditioning")
        start = first_step(subject, seeds, steps)
        x_T, _ = optimize_x_T(subject, cond, start, lr=self.lr, target_loss=self.target_loss,
                              max_steps=self.max_steps, weight_decay=self.weight_decay)
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(x_T=x_T, label=self.name))
