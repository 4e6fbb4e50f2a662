"""Jain et al. (CVPR 2025) guidance schedules as mitigations: static transition point, opposite guidance, dynamic
transition point and OG + DTP.

Each wraps a schedule of :mod:`diffmem.sampling.guidance` (the loop owns the weight, never the model): ε = ε_u + w(t)
(ε_c − ε_u) with w(t) = ``w1`` while the timestep t is above τ (guidance off or reversed early, at *large* t) and the
plain weight once t ≤ τ; the dynamic variants switch per sample at a transition of d_t = ‖ε_c − ε_u‖₂. None costs an
extra network evaluation: ε_u is evaluated at every step anyway (the loop keeps it when w = 1 because d_t is read).

The dynamic variant is offered in both published readings: Jain's (``trigger="first_local_min"``,
d_{i−2} > d_{i−1} < d_i, latched) and the ``yupeeee/WAH`` port's (``trigger="two_decreases"``,
d_{i−2} > d_{i−1} > d_i; with ``latch=False`` the pair is frozen at the switch and guidance stays on only while
d_i < the frozen d_{i−1}, else it drops back and tracking resumes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.sampling.guidance import Guidance, StaticTransition, _check_weight
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond

__all__ = ["StaticTransitionPoint", "OppositeGuidance", "DynamicTransitionPoint", "OppositeDynamic",
           "TransitionSchedule", "TRIGGERS", "transition_on"]

TRIGGERS = ("first_local_min", "two_decreases")
HAN_TAU_GRID = (999.0, 978.6, 958.2, 937.8, 917.4)  # Han et al.'s STP sweep (SD timesteps)
HAN_S_GRID = (1.0, 3.0, 5.0, 7.0, 9.0)  # Han et al.'s OG strength sweep


def transition_on(d_hist: Tensor, trigger: str = "first_local_min", latch: bool = True) -> Tensor:
    """Per sample, whether guidance is on at the last step of ``d_hist`` [i + 1, B] (Jain et al., CVPR 2025).

    Replays the history: the switch fires at step j when (d_{j−2}, d_{j−1}, d_j) shows ``trigger``; latched, it
    stays on; unlatched (the WAH port), it stays on only while d_j < the d_{j−1} frozen at the switch."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")
    d = d_hist.double()
    on = torch.zeros(d.shape[1], dtype=torch.bool)
    frozen = torch.full((d.shape[1],), float("inf"), dtype=torch.float64)
    for j in range(2, d.shape[0]):
        a, b, c = d[j - 2], d[j - 1], d[j]
        fire = (a > b) & ((b < c) if trigger == "first_local_min" else (b > c)) & ~on
        if not latch:
            on = on & (c < frozen)  # the WAH port: off again once d_j climbs back to the frozen d_{j−1}
        frozen = torch.where(fire, b, frozen)
        on = on | fire
    return on


@dataclass(frozen=True)
class TransitionSchedule(Guidance):
    """Weight ``w_early`` until the d_t transition (``trigger``, ``latch``; :func:`transition_on`), ``w`` after."""

    w: float = 7.5
    w_early: float = 1.0
    trigger: str = "first_local_min"
    latch: bool = True

    def __post_init__(self):
        _check_weight("w", self.w)
        _check_weight("w_early", self.w_early)
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")

    def weight(self, i, num_steps, t, d_hist):
        on = transition_on(d_hist, self.trigger, self.latch)
        return torch.where(on, self.w, self.w_early).to(torch.float64)


class _Scheduled(InferenceMitigation):
    """A mitigation that is one guidance schedule built from the plain weight."""

    def schedule(self, guidance: float) -> Guidance:
        raise NotImplementedError  # pragma: no cover - interface

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        return subject.sample(cond, seeds, guidance=self.schedule(guidance), steps=steps, **kwargs)


@register
@dataclass(frozen=True)
class StaticTransitionPoint(_Scheduled):
    """Static transition point (Jain et al., CVPR 2025): weight ``w1`` while t > τ, the plain weight once t ≤ τ.

    τ is in the model's own timestep units (compared with the grid's t, not the step index). README default τ = 500,
    ``w1 = 0`` (pure ε_u early); the grid is Han et al.'s sweep."""

    name = "jain-stp"
    citation = "Jain et al., CVPR 2025"
    knob = "tau"
    grid = HAN_TAU_GRID
    tau: float = 500.0
    w1: float = 0.0

    def __post_init__(self):
        _check_weight("tau", self.tau)
        _check_weight("w1", self.w1)

    def schedule(self, guidance: float) -> Guidance:
        return StaticTransition(w=guidance, tau=self.tau, w1=self.w1)


@register
@dataclass(frozen=True)
class OppositeGuidance(_Scheduled):
    """Opposite guidance (Jain et al., CVPR 2025): ε_u − s (ε_c − ε_u) while t > τ, the plain weight after
    (README: s = 2, τ = 650; grid: Han et al.'s strengths)."""

    name = "jain-og"
    citation = "Jain et al., CVPR 2025"
    knob = "s"
    grid = HAN_S_GRID
    s: float = 2.0
    tau: float = 650.0

    def __post_init__(self):
        if _check_weight("s", self.s) <= 0:
            raise ValueError(f"opposite-guidance strength s must be > 0, got {self.s!r}")
        _check_weight("tau", self.tau)

    def schedule(self, guidance: float) -> Guidance:
        return StaticTransition(w=guidance, tau=self.tau, w1=-self.s)


@register
@dataclass(frozen=True)
class DynamicTransitionPoint(_Scheduled):
    """Dynamic transition point (Jain et al., CVPR 2025): weight ``w_early`` (1: plain conditional) until the
    transition of d_t, then the plain weight; per sample. ``trigger``/``latch`` select Jain's or the WAH reading."""

    name = "jain-dtp"
    citation = "Jain et al., CVPR 2025"
    knob = "trigger"
    grid = TRIGGERS
    trigger: str = "first_local_min"
    latch: bool = True
    w_early: float = 1.0

    def __post_init__(self):
        _check_weight("w_early", self.w_early)
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")

    def schedule(self, guidance: float) -> Guidance:
        return TransitionSchedule(w=guidance, w_early=self.w_early, trigger=self.trigger, latch=self.latch)


@register
@dataclass(frozen=True)
class OppositeDynamic(_Scheduled):
    """OG + DTP (Jain et al., CVPR 2025): weight −s before the d_t transition, the plain weight after."""

    name = "jain-og-dtp"
    citation = "Jain et al., CVPR 2025"
    knob = "s"
    grid = HAN_S_GRID
    s: float = 2.0
    trigger: str = "first_local_min"
    latch: bool = True

    def __post_init__(self):
        if _check_weight("s", self.s) <= 0:
            raise ValueError(f"opposite-guidance strength s must be > 0, got {self.s!r}")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")

    def schedule(self, guidance: float) -> Guidance:
        return TransitionSchedule(w=guidance, w_early=-self.s, trigger=self.trigger, latch=self.latch)
