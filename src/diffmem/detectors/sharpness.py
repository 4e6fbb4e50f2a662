"""Hessian–score sharpness (Jeon, Kim & No, ICML 2025): ‖H^Δ s^Δ‖ at x_T by one forward-mode JVP.

With the score s = −ε/σ_t (σ_t = √(1 − ᾱ_t), the VP std), s^Δ = s_c − s_u and H = ∂s/∂x = −J/σ_t (J = ∂ε/∂x), the
statistic of one generation at one state is

    ‖(H_c − H_u) s^Δ‖₂ = ‖(J_c − J_u)(ε_c − ε_u)‖₂ / σ_t²,

computed as the paper does: a plain CFG forward gives s^Δ, which is detached into a fixed tangent, and one JVP of
x ↦ (s_u(x), s_c(x)) along it gives H_u s^Δ and H_c s^Δ. It is averaged over the states entering the first k steps of
the guided trajectory (k = 1: x_T only, the paper's default) and over generations. The paper squares the norm; at
k = 1 that is the same ranking, at k > 1 we average norms.

The VJP form of the "Early Detection" work (ICML 2026), ‖(J_c − J_u)ᵀ(ε_c − ε_u)‖, is one reverse pass of
⟨ε_c − ε_u, sg(ε_c − ε_u)⟩ (sg = stop-gradient). It is reported in the same units (÷ σ_t²), so the two coincide where
the Jacobian is symmetric — exact denoisers, whose J is a Hessian up to sign and scale — and differ on learned ones.

Cost per generation: 2(k − 1) NFE for the trajectory, then per probed state 2 NFE + 2 JVP rows (JVP form) or 2 VJP
rows (VJP form: the forward of the reverse pass also gives ε_c and ε_u).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, eps_difference, register
from diffmem.detectors.probes import guided_states, jvp_eps, upcast, vp_sigma
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["HessianSharpness", "HessianSharpnessVJP", "hessian_score_product"]

JEON = ("Jeon, Kim & No, Understanding and Mitigating Memorization in Generative Models via Sharpness of "
        "Probability Landscapes, ICML 2025")


def hessian_score_product(subject: Subject, x_t: Tensor, t, cond: Cond, alpha_bar) -> Tensor:
    """(H_c − H_u) s^Δ [B, *state] at states x_t: a CFG forward for s^Δ, then one JVP along the detached s^Δ."""
    sigma = vp_sigma(alpha_bar)
    with torch.no_grad():
        pred = subject.denoiser(x_t, t, cond)
    s_delta = -eps_difference(pred.eps_c, pred.eps_u) / sigma
    _, _, jv_c, jv_u = jvp_eps(subject, x_t, t, cond, s_delta)
    return -(jv_c - jv_u) / sigma  # H v = −J v / σ_t


@register
@dataclass(frozen=True)
class HessianSharpness(PerGeneration):
    """Hessian–score sharpness (Jeon, Kim & No, ICML 2025): ‖(H_c − H_u)(s_c − s_u)‖₂ by a JVP.

    Attributes:
        k: probed states: those entering steps 0 … k − 1 of the guided trajectory (1 = x_T only).
        guidance: the CFG weight w of the trajectory the probed states lie on (unused at k = 1).
        steps: grid length (None: the subject's default); the first grid timestep is the paper's t = 981.
    """

    name = "jeon-sharpness"
    citation = JEON
    higher_is_memorized = True
    needs = frozenset({"jvp"})
    k: int = 1
    guidance: float = 7.5
    steps: int | None = None

    def statistic(self, subject: Subject, x_t: Tensor, t, cond: Cond, alpha_bar) -> Tensor:
        """The per-sample statistic [B] at states x_t."""
        return hessian_score_product(subject, x_t, t, cond, alpha_bar).flatten(1).norm(dim=1)

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        def mean_over_states(cond: Cond, batch_seeds: list[int]) -> Tensor:
            states, ts, abars = guided_states(subject, cond, batch_seeds, self.k, guidance=self.guidance,
                                              steps=self.steps)
            return torch.stack([self.statistic(subject, x, t, cond, ab)
                                for x, t, ab in zip(states, ts, abars, strict=True)]).double().mean(0)

        return self.over_batches(subject, prompts, seeds, mean_over_states)


@register
@dataclass(frozen=True)
class HessianSharpnessVJP(HessianSharpness):
    """Hessian–score sharpness, VJP form ("Early Detection", ICML 2026): ‖(J_c − J_u)ᵀ(ε_c − ε_u)‖₂ / σ_t².

    One reverse pass; equal to :class:`HessianSharpness` where the Jacobian is symmetric."""

    name = "jeon-sharpness-vjp"
    citation = JEON + "; VJP form of Early Detection of Memorization in Diffusion Models, ICML 2026"
    needs = frozenset({"vjp"})

    def statistic(self, subject: Subject, x_t: Tensor, t, cond: Cond, alpha_bar) -> Tensor:
        x = x_t.detach().requires_grad_()
        with torch.enable_grad():
            pred = subject.denoiser(x, t, cond)
            d = eps_difference(pred.eps_c, pred.eps_u)
            (g,) = torch.autograd.grad((d * d.detach()).sum(), x)  # (J_c − J_u)ᵀ d, row by row
        return upcast(g).flatten(1).norm(dim=1) / vp_sigma(alpha_bar) ** 2
