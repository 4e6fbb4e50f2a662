"""One-step white-box "denoising confidence" (Webster, arXiv 2305.08694, 2023): copies come out sharp in one step.

Webster's score takes a single Karras-σ step from z_T = σ_max·z straight to σ = 0 with CFG, x̂₀ = D_cfg(z_T), and
scores mean((z_T − x̂₀)²) over the latent, higher = candidate copy.

Derivation (ours, not the author's): in the VE view z = x_t/√ᾱ_t = x₀ + σ ε with σ = √((1 − ᾱ_t)/ᾱ_t), the guided
denoiser is x̂₀ = z − σ ε̂ with ε̂ = ε_u + w(ε_c − ε_u) evaluated at the VP state x_t. Hence z_T − x̂₀ = σ ε̂ and

    score = σ_T²·mean(ε̂²),

a squared, guidance-weighted first-step magnitude: ‖ε̂‖² = ‖ε_u‖² + 2w⟨ε_u, d⟩ + w²‖d‖² with d = ε_c − ε_u. With the
same x_T for every prompt, ‖ε_u‖² is common to all prompts, the w²‖d‖² term is Wen et al.'s signal, and the cross
term 2w⟨ε_u, d⟩ is seed noise that only averages out over generations.

We evaluate it at the subject's x_T and first grid timestep t₀ (σ_T = σ(t₀)); Webster's σ_max is that of the last
training timestep (t = 999: the same as t₀ on trailing grids, 981 on SD's leading DDIM grid), and his VP input is
√(1 − ᾱ)·z rather than z (a factor 0.998 at t = 999). Cost: 2 NFE per generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, register
from diffmem.detectors.probes import initial_states, upcast
from diffmem.sampling.guidance import cfg
from diffmem.schedules import sigma_from_alpha_bar
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["OneStepConfidence"]


@register
@dataclass(frozen=True)
class OneStepConfidence(PerGeneration):
    """One-step white-box denoising confidence (Webster, 2023): σ_T²·mean((ε_u + w(ε_c − ε_u))²) at x_T.

    Attributes:
        guidance: the CFG weight w of the one step.
        steps: grid length (None: the subject's default); t₀ is its first timestep.
    """

    name = "webster-onestep"
    citation = "Webster, A Reproducible Extraction of Training Images from Diffusion Models, arXiv 2305.08694, 2023"
    higher_is_memorized = True
    needs = frozenset()
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        grid = subject.sampler(self.steps or subject.steps).grid
        sigma2 = float(sigma_from_alpha_bar(grid.alpha_bar[0])) ** 2  # VE σ_T²

        def confidence(cond: Cond, batch_seeds: list[int]) -> Tensor:
            x_T = initial_states(subject, batch_seeds, self.steps)
            with torch.no_grad():
                pred = subject.denoiser(x_T, grid.timesteps[0], cond, uncond=self.guidance != 1.0)
            eps_u = upcast(pred.eps_c if pred.eps_u is None else pred.eps_u)
            eps_hat = cfg(eps_u, upcast(pred.eps_c), self.guidance)
            return sigma2 * eps_hat.flatten(1).square().mean(1)

        return self.over_batches(subject, prompts, seeds, confidence)
