"""Early-step derivative and jump scores ("Early Detection of Memorization in Diffusion Models", ICML 2026).

Three statistics of the first steps, all squared norms over the state of one generation, higher = memorized:

* **Metric 2** at x_T and t₀ (the first grid timestep): M2 = ‖J_cᵀε_c − J_uᵀε_u‖², J = ∂ε/∂x. Since
  J_cᵀε_c = ∇_x ½‖ε_c‖², M2 = ‖∇_x ½(‖ε_c‖² − ‖ε_u‖²)‖²: one reverse pass of one scalar over the CFG pair (the
  reference takes two). The reference calls it "H_c s_c − H_u s_u" but works in ε units, as we do.
* **DSM(0→1)** = ‖ε_c(x_{t₁}, t₁) − ε_c(x_T, t₀)‖² and **DSM(1→2)** = ‖ε_c(x_{t₂}, t₂) − ε_c(x_{t₁}, t₁)‖²: the jump
  of the conditional prediction along the guided DDIM trajectory from x_T. The one loop runs the first 2 (3) steps
  and records ε_c; the last of them needs ε_c only, so it runs unguided (:class:`~diffmem.sampling.guidance.Window`
  closes before it) and the costs are the reference's.

Cost per generation: M2 2 VJP rows; DSM(0→1) 3 NFE; DSM(1→2) 5 NFE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, register
from diffmem.detectors.probes import guided_states, upcast
from diffmem.sampling.guidance import Window
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["Metric2", "DSM01", "DSM12", "metric2_gradient", "dsm"]

EARLY = "Early Detection of Memorization in Diffusion Models (anonymous), ICML 2026"


def metric2_gradient(subject: Subject, x_t: Tensor, t, cond: Cond) -> Tensor:
    """∇_x ½(‖ε_c‖² − ‖ε_u‖²) = J_cᵀε_c − J_uᵀε_u [B, *state] at states x_t, by one reverse pass."""
    x = x_t.detach().requires_grad_()
    with torch.enable_grad():
        pred = subject.denoiser(x, t, cond)
        if pred.eps_u is None:
            raise ValueError("Metric 2 needs the null branch (ε_u) of every prompt's conditioning")
        energy = 0.5 * (upcast(pred.eps_c).square().sum() - upcast(pred.eps_u).square().sum())
        (g,) = torch.autograd.grad(energy, x)  # rows are independent: the batch sum separates them
    return upcast(g)


def dsm(eps_c: Tensor, frm: int) -> Tensor:
    """‖ε_c[frm + 1] − ε_c[frm]‖² per sample [B] from recorded conditional predictions [S, B, *state]."""
    return (upcast(eps_c[frm + 1]) - upcast(eps_c[frm])).flatten(1).square().sum(1)


@register
@dataclass(frozen=True)
class Metric2(PerGeneration):
    """Metric 2 (Early Detection, ICML 2026): ‖∇_x ½(‖ε_c‖² − ‖ε_u‖²)‖² at x_T, one reverse pass.

    Attributes:
        steps: grid length (None: the subject's default); t₀ is its first timestep.
    """

    name = "early-m2"
    citation = EARLY
    higher_is_memorized = True
    needs = frozenset({"vjp"})
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        def m2(cond: Cond, batch_seeds: list[int]) -> Tensor:
            states, ts, _ = guided_states(subject, cond, batch_seeds, 1, steps=self.steps)
            return metric2_gradient(subject, states[0], ts[0], cond).flatten(1).square().sum(1)

        return self.over_batches(subject, prompts, seeds, m2)


@register
@dataclass(frozen=True)
class DSM01(PerGeneration):
    """DSM(0→1) (Early Detection, ICML 2026): ‖ε_c(x_{t₁}, t₁) − ε_c(x_T, t₀)‖² after one guided DDIM step.

    Attributes:
        guidance: the CFG weight w of the guided steps.
        steps: grid length (None: the subject's default).
    """

    name = "early-dsm01"
    citation = EARLY
    higher_is_memorized = True
    needs = frozenset()
    frm: ClassVar[int] = 0  # the jump from step frm to step frm + 1
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        k = self.frm + 2  # steps run; the last needs ε_c only
        guided = Window(w=self.guidance, start=0.0, stop=(k - 1) / k, w_outside=1.0)

        def jump(cond: Cond, batch_seeds: list[int]) -> Tensor:
            traj = subject.sample(cond, batch_seeds, guidance=guided, steps=self.steps, first=k,
                                  recorder=Recorder(keep=("eps_c",)))
            return dsm(traj.eps_c, self.frm)

        return self.over_batches(subject, prompts, seeds, jump)


@register
@dataclass(frozen=True)
class DSM12(DSM01):
    """DSM(1→2) (Early Detection, ICML 2026): ‖ε_c(x_{t₂}, t₂) − ε_c(x_{t₁}, t₁)‖² after two guided DDIM steps."""

    name = "early-dsm12"
    frm = 1
