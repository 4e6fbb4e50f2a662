"""One-step embedding update (Kim, Kim & Lee, revision of "How Diffusion Models Memorize"): shrink x̂_T(c) at t₀.

Guidance injects g·(x̂_T(c) − x̂_T(∅)) ≈ g·(x* − μ) at the first step; pulling the conditional clean estimate
x̂_T(c) = (x_T − √(1 − ᾱ_{t₀})·ε_c) / √ᾱ_{t₀} toward a centre removes it. Before sampling, one AdamW step (lr 0.1,
torch's default weight decay; e_∅ fixed, the BOS gradient zeroed) is taken on e_p to lower ‖x̂_T(c) − centre‖₂, and
the run samples with plain CFG from the same x_T.

* ``center="zero"`` (default): ‖x̂_T(c)‖ (μ ≈ 0 in SD latents);
* ``"mu_hat"``: the mean of x̂_T(∅) over ``mu_seeds`` fresh draws (their NFE are counted);
* ``"uncond"``: x̂_T(∅), giving (σ/α)·‖ε_c − ε_u‖, Wen et al.'s objective;
* ``loss="coded"``: the coefficients of the authors' utility library, ‖(x_T − ᾱ·ε_c)/√(1 − ᾱ)‖, which are not those
  of x̂_T (ᾱ where √(1 − ᾱ) belongs and √(1 − ᾱ) where √ᾱ belongs); kept to compare.

Adam's first bias-corrected update is lr·g/(|g| + eps) per coordinate: a sign step, so the loss scale does not matter
and ``lr`` is the step size. Cost: ``n_steps`` guided evaluations with a backward (2 VJP rows each) per generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import (
    FirstStep,
    Replace,
    descend_embedding,
    embedding,
    first_step,
    sample_with,
    with_embedding,
)
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond, index_cond

__all__ = ["KimEmbedding", "kim_loss", "one_step_embedding", "CENTERS", "LOSSES"]

KIM = "Kim, Kim & Lee, How Diffusion Models Memorize (revised theory; authors' mitigation), 2025"
CENTERS = ("zero", "mu_hat", "uncond")
LOSSES = ("x0", "coded")
MU_SEED0 = 1_000_000  # first seed of the draws that estimate mu_hat (apart from any evaluation seed)


def kim_loss(x_T: Tensor, eps_c: Tensor, alpha_bar: float, center: Tensor | float = 0.0, *,
             loss: str = "x0") -> Tensor:
    """Per-sample ‖x̂_T(c) − centre‖₂ with x̂_T(c) = (x_T − √(1 − ᾱ)·ε_c)/√ᾱ, or the coded coefficients."""
    if loss == "x0":
        x0_hat = (x_T - math.sqrt(1 - alpha_bar) * eps_c) / math.sqrt(alpha_bar)
    elif loss == "coded":
        x0_hat = (x_T - alpha_bar * eps_c) / math.sqrt(1 - alpha_bar)
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    return (x0_hat - center).flatten(1).norm(dim=1)


def _center(subject: Subject, cond: Cond, start: FirstStep, center: str, mu_seeds: int) -> Tensor | float:
    if center == "zero":
        return 0.0
    if cond.null is None:
        raise ValueError(f"center={center!r} needs the null branch (ε_u) of the conditioning")
    ab = start.alpha_bar
    with torch.no_grad():
        if center == "uncond":
            eps_u = subject.denoiser(start.x_T, start.t, Cond(cond.null)).eps_c
            return (start.x_T - math.sqrt(1 - ab) * eps_u) / math.sqrt(ab)
        z = first_step(subject, range(MU_SEED0, MU_SEED0 + mu_seeds)).x_T
        null = index_cond(cond.null, torch.zeros(mu_seeds, dtype=torch.long))
        eps_u = subject.denoiser(z, start.t, Cond(null)).eps_c
        return ((z - math.sqrt(1 - ab) * eps_u) / math.sqrt(ab)).mean(0, keepdim=True)


def one_step_embedding(subject: Subject, cond: Cond, start: FirstStep, *, lr: float = 0.1, n_steps: int = 1,
                       center: str = "zero", loss: str = "x0", mu_seeds: int = 64,
                       weight_decay: float = 0.01) -> tuple[Cond, Tensor]:
    """(the conditioning with updated e_p, the loss before each step [n_steps, B])."""
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; expected one of {CENTERS}")
    ref = _center(subject, cond, start, center, mu_seeds)
    e0 = embedding(cond.c)

    def value(leaf: Tensor, rows: Tensor) -> Tensor:  # ε_c only: e_∅ is fixed and not needed here
        eps_c = subject.denoiser(start.x_T[rows].detach(), start.t, Cond(with_embedding(index_cond(cond.c, rows),
                                                                                      leaf.to(e0.dtype)))).eps_c
        centre = ref if isinstance(ref, float) or len(ref) == 1 else ref[rows]
        return kim_loss(start.x_T[rows], eps_c.to(leaf.dtype), start.alpha_bar, centre, loss=loss)

    return descend_embedding(cond, e0, value, lr=lr, max_steps=n_steps, target=-math.inf,
                             weight_decay=weight_decay)


@register
@dataclass(frozen=True)
class KimEmbedding(InferenceMitigation):
    """One-step embedding update (Kim, Kim & Lee, revision): one AdamW step on e_p lowering ‖x̂_T(c) − centre‖.

    Attributes:
        lr: AdamW step size (a sign step on the first update); n_steps: updates (1 in the reference).
        center: ``"zero"``, ``"mu_hat"`` or ``"uncond"``; loss: ``"x0"`` (true x̂_T coefficients) or ``"coded"``.
        mu_seeds: draws that estimate mu_hat; weight_decay: torch's AdamW default.
    """

    name = "kim-embedding"
    citation = KIM
    knob = "lr"
    grid = (0.03, 0.1, 0.3)  # project grid around the reference's 0.1 (no published sweep)
    lr: float = 0.1
    n_steps: int = 1
    center: str = "zero"
    loss: str = "x0"
    mu_seeds: int = 64
    weight_decay: float = 0.01

    def __post_init__(self):
        if self.center not in CENTERS or self.loss not in LOSSES:
            raise ValueError(f"center must be one of {CENTERS} and loss one of {LOSSES}; got {self.center!r}, "
                             f"{self.loss!r}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps!r}")

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        start = first_step(subject, seeds, steps)
        edited, _ = one_step_embedding(subject, cond, start, lr=self.lr, n_steps=self.n_steps, center=self.center,
                                       loss=self.loss, mu_seeds=self.mu_seeds, weight_decay=self.weight_decay)
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           edit=Replace(cond=edited, label=self.name))
