"""Ours, from Kim, Kim & Lee (2025): withhold guidance from the samples whose first step shows the overestimation.

Kim et al. (Cor. 3 of their revision) show that for a memorized prompt the conditional clean estimate at the first
timestep T is already the training image, x0_hat_T(c) → x*, while the unconditional one is the data mean,
x0_hat_T(∅) → μ; guidance then overshoots to μ + g (x* − μ). The first step therefore carries a training-data-free,
per-sample test at no extra cost: the clean-space guidance gap

    ρ = ‖x0_hat_T(c) − x0_hat_T(∅)‖ / √d = √((1 − ᾱ_T)/ᾱ_T) · d_T / √d,

where d_T = ‖ε_c − ε_u‖₂ is what the loop records anyway (x̂₀ is affine in ε at fixed x_t). A sample with ρ above
``rho`` (the full image-scale distance ‖x* − μ‖/√d of a memorized prompt, against the blurred E[x|c] − μ of a
generic one) is sampled with guidance withheld (weight ``w1``, 0 = pure ε_u) while t > ``tau``; every other sample
keeps the plain weight, so an unflagged sample is plain sampling bit for bit. The first step itself is guided
normally (its displacement g κ_T Δ_T is tiny: κ_T ≈ 0.009 on SD's grid, Kim et al. Lemma 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.sampling.guidance import _check_weight
from diffmem.sampling.hooks import Intervention
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond

__all__ = ["OvershootGuard", "OvershootIntervention", "first_step_gap"]


def first_step_gap(d_T: Tensor, alpha_bar_T: float, dim: int) -> Tensor:
    """ρ = ‖x0_hat_T(c) − x0_hat_T(∅)‖/√d from d_T = ‖ε_c − ε_u‖₂ (Kim et al., 2025: the gap of Cor. 3)."""
    return d_T * math.sqrt((1.0 - alpha_bar_T) / alpha_bar_T) / math.sqrt(dim)


class OvershootIntervention(Intervention):
    """Per-sample weight edit: after step 0, weight ``w1`` while t > ``tau`` for samples with ρ > ``rho``."""

    def __init__(self, rho: float, tau: float, w1: float, alpha_bar_T: float, dim: int):
        self.rho, self.tau, self.w1, self.alpha_bar_T, self.dim = rho, tau, w1, alpha_bar_T, dim
        self.flagged: Tensor | None = None

    def edit_weight(self, i: int, t: float, w: Tensor, d_hist: Tensor) -> Tensor:
        if i == 0:
            self.flagged = first_step_gap(d_hist[0], self.alpha_bar_T, self.dim) > self.rho  # NaN d: not flagged
            return w
        return torch.where(self.flagged & (t > self.tau), torch.full_like(w, self.w1), w)


@register
@dataclass(frozen=True)
class OvershootGuard(InferenceMitigation):
    """Kim et al. (2025) mechanism, our remedy: guidance withheld (weight ``w1``) until t ≤ ``tau`` on the samples
    whose first-step clean-space guidance gap ρ exceeds ``rho``; zero extra network evaluations."""

    name = "ours-overshoot"
    citation = "ours, from Kim, Kim & Lee 2025 (arXiv 2509.25705)"
    knob = "rho"
    grid = (0.45, 0.5, 0.55, 0.6, 0.65)
    ours = True
    rho: float = 0.55
    tau: float = 100.0
    w1: float = 0.0

    def __post_init__(self):
        if _check_weight("rho", self.rho) < 0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        _check_weight("tau", self.tau)
        _check_weight("w1", self.w1)

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, interventions: Sequence[Intervention] = (), **kwargs) -> Trajectory:
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance == 1:
            raise ValueError(f"ours-overshoot needs a constant CFG weight != 1 (it reads d_T), got {guidance!r}")
        alpha_bar_T = float(subject.sampler(steps or subject.steps).grid.alpha_bar[0])
        edit = OvershootIntervention(self.rho, self.tau, self.w1, alpha_bar_T, math.prod(subject.state_shape))
        return subject.sample(cond, seeds, guidance=guidance, steps=steps,
                              interventions=(*interventions, edit), **kwargs)
