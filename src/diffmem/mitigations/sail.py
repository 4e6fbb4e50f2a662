"""SAIL, sharpness-aware initialization (Jeon, Kim & No, ICML 2025): optimize x_T to a flat region, then sample.

The sharpness ‖H^Δ s^Δ‖ at x_T (:mod:`diffmem.detectors.sharpness`, s^Δ = −(ε_c − ε_u)/σ_t the guidance score and
H^Δ its Jacobian) is lowered through the paper's finite-difference proxy

    L(x_T) = ‖s^Δ(x_T + δ·ŝ^Δ) − s^Δ(x_T)‖² + α‖x_T‖²,   ŝ^Δ = s^Δ/‖s^Δ‖ (held fixed in each iteration),

since s^Δ(x + δŝ) − s^Δ(x) ≈ (δ/‖s^Δ‖)·H^Δ s^Δ; the α term keeps x_T near the Gaussian shell. Adam (lr 0.05) runs
until L ≤ ``threshold`` or ``max_steps``, per generation; then plain CFG samples from the new x_T. The released
code's variant (plain norms, the perturbed difference only, 8 candidate latents and a rising threshold) is not
this one. Thresholds (SD 1: 7.6–9) are in SD latent units: recalibrate elsewhere. Cost: per iteration two guided
evaluations with one backward through both (4 VJP rows) per generation still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import eps_difference
from diffmem.detectors.probes import vp_sigma
from diffmem.detectors.sharpness import JEON, hessian_score_product
from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import FirstStep, Replace, descend, first_step, sample_with
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond, concat_cond

__all__ = ["SAIL", "sail_loss", "sail_x_T", "first_step_sharpness"]


def first_step_sharpness(subject: Subject, x_T: Tensor, start: FirstStep, cond: Cond) -> Tensor:
    """The detector's statistic ‖(H_c − H_u) s^Δ‖₂ [B] at x_T and t₀ (one forward plus one JVP)."""
    return hessian_score_product(subject, x_T, start.t, cond, start.alpha_bar).flatten(1).norm(dim=1)


def sail_loss(subject: Subject, x: Tensor, start: FirstStep, cond: Cond, *, delta: float, alpha: float) -> Tensor:
    """Per-sample ‖s^Δ(x + δ·ŝ^Δ) − s^Δ(x)‖² + α‖x‖² (differentiable in ``x``)."""
    sigma = vp_sigma(start.alpha_bar)
    both = torch.cat([x, x + delta * _unit(subject, x, start, cond)])  # one call: [x; x + δŝ]
    pred = subject.denoiser(both.to(start.x_T.dtype), start.t, Cond(_twice(cond.c), _twice(cond.null)))
    s_delta = -eps_difference(pred.eps_c, pred.eps_u) / sigma
    near, far = s_delta.chunk(2)
    return (far - near).flatten(1).pow(2).sum(1) + alpha * x.flatten(1).pow(2).sum(1)


def _twice(c):
    return concat_cond(c, c)


def _unit(subject: Subject, x: Tensor, start: FirstStep, cond: Cond) -> Tensor:
    """ŝ^Δ = s^Δ/‖s^Δ‖ at x, without gradient (the direction is held fixed)."""
    with torch.no_grad():
        pred = subject.denoiser(x.detach().to(start.x_T.dtype), start.t, cond)
        s = -eps_difference(pred.eps_c, pred.eps_u)
    norm = s.flatten(1).norm(dim=1).clamp_min(torch.finfo(s.dtype).tiny)
    return (s / norm.view(-1, *[1] * (s.ndim - 1))).to(x.dtype)


def sail_x_T(subject: Subject, cond: Cond, start: FirstStep, *, lr: float, alpha: float, delta: float,
             threshold: float, max_steps: int) -> tuple[Tensor, Tensor]:
    """(optimized x_T, the loss at each iteration [max_steps, B], NaN after a row stopped)."""
    def loss(leaf: Tensor, rows: Tensor) -> Tensor:
        return sail_loss(subject, leaf, start, cond.select(rows), delta=delta, alpha=alpha)

    x, losses = descend(start.x_T, loss, lr=lr, max_steps=max_steps, target=threshold)
    return x.to(start.x_T.dtype), losses


@register
@dataclass(frozen=True)
class SAIL(InferenceMitigation):
    """SAIL (Jeon, Kim & No, ICML 2025): Adam on x_T lowering the finite-difference sharpness plus α‖x_T‖².

    Attributes:
        threshold: ℓ_thres, stop once L ≤ it (SD 1: 7.6–9; SD 2: 4–6).
        alpha: α (SD 1 0.05, SD 2 0.01); lr: Adam rate 0.05; delta: δ, the finite-difference step (latent units).
        max_steps: iterations at most (the released code: 10).
    """

    name = "sail"
    citation = JEON
    knob = "threshold"
    grid = (7.6, 8.0, 8.5, 9.0)  # SD 1 range
    threshold: float = 8.2
    alpha: float = 0.05
    lr: float = 0.05
    delta: float = 1.0
    max_steps: int = 10

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        if cond.null is None:
            raise ValueError("SAIL needs the null branch (ε_u) of the conditioning")
        start = first_step(subject, seeds, steps)
        x_T, _ = sail_x_T(subject, cond, start, lr=self.lr, alpha=self.alpha, delta=self.delta,
                          threshold=self.threshold, max_steps=self.max_steps)
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(x_T=x_T, label=self.name))
