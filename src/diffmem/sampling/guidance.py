"""Classifier-free guidance as a schedulable function of the loop, never of the model.

``cfg`` is Ho & Salimans (2022): ε̃ = ε_u + w (ε_c − ε_u). A schedule returns the weight per sample at each step from
the step index, the timestep and the history of d_t = ‖ε_c − ε_u‖₂ (Wen et al., ICLR 2024); the static and dynamic
transition points and opposite guidance are Jain et al. (CVPR 2025).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from diffmem.schedules import x0_from_eps
from diffmem.types import Prediction

__all__ = ["cfg", "guide", "Guidance", "Constant", "Window", "StaticTransition", "DynamicTransition",
           "opposite_guidance", "GUIDANCE"]


def cfg(eps_u: Tensor, eps_c: Tensor, w) -> Tensor:
    """Classifier-free guidance ε̃ = ε_u + w (ε_c − ε_u) (Ho & Salimans, 2022).

    ``w`` is a float or a per-sample tensor of shape [B]. Example:
        >>> cfg(torch.zeros(2), torch.ones(2), 7.5).tolist()
        [7.5, 7.5]
    """
    if isinstance(w, Tensor) and w.ndim == 1:
        w = w.to(device=eps_c.device, dtype=eps_c.dtype).view(-1, *([1] * (eps_c.ndim - 1)))
    return eps_u + w * (eps_c - eps_u)


def guide(pred: Prediction, w: Tensor, x_t: Tensor, alpha_bar_t: float) -> Prediction:
    """Apply guidance weight ``w`` [B] to an unguided prediction; x̂₀ is recomputed from the guided ε with the
    loop's ᾱ_t. Where ε_u is absent the weight must be 1 (plain conditional prediction)."""
    plain = bool((w == 1).all())
    if pred.eps_u is None and not plain:
        raise ValueError(f"guidance weight {w.tolist()} needs eps_u, which was not evaluated")
    eps = pred.eps_c if plain else cfg(pred.eps_u, pred.eps_c, w)  # w = 1 keeps ε_c bit for bit
    return Prediction(pred.eps_c, pred.eps_u, eps, x0_from_eps(x_t, eps, alpha_bar_t))


def _check_weight(name: str, w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"guidance weight {name} must be a finite number, got {w!r}")
    return float(w)


class Guidance:
    """A guidance schedule. Subclasses are frozen dataclasses; ``to_dict`` goes into provenance."""

    def weight(self, i: int, num_steps: int, t: float, d_hist: Tensor | None) -> Tensor | float:
        """Guidance weight at step ``i`` (float, or [B] tensor); ``d_hist`` is [i + 1, B] (d_0 … d_i)."""
        raise NotImplementedError  # pragma: no cover - interface

    def needs_uncond(self, i: int, num_steps: int) -> bool:
        """Whether ε_u must be evaluated at step ``i``."""
        return True

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class Constant(Guidance):
    """The same weight at every step; w = 1 is the plain conditional model and skips ε_u.

    ``always_uncond`` evaluates ε_u anyway (for analyses that need it at w = 1)."""

    w: float = 7.5
    always_uncond: bool = False

    def __post_init__(self):
        _check_weight("w", self.w)

    def weight(self, i, num_steps, t, d_hist):
        return self.w

    def needs_uncond(self, i, num_steps):
        return self.always_uncond or self.w != 1.0


@dataclass(frozen=True)
class Window(Guidance):
    """Weight ``w`` on steps with start ≤ i/num_steps < stop, ``w_outside`` elsewhere (fractions of the run, as in
    the diffusers guiders' start/stop)."""

    w: float = 7.5
    start: float = 0.0
    stop: float = 1.0
    w_outside: float = 1.0

    def __post_init__(self):
        _check_weight("w", self.w)
        _check_weight("w_outside", self.w_outside)
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ValueError(f"need 0 <= start <= stop <= 1, got start={self.start!r}, stop={self.stop!r}")

    def _inside(self, i, num_steps) -> bool:
        return self.start <= i / num_steps < self.stop

    def weight(self, i, num_steps, t, d_hist):
        return self.w if self._inside(i, num_steps) else self.w_outside

    def needs_uncond(self, i, num_steps):
        return (self.w if self._inside(i, num_steps) else self.w_outside) != 1.0


@dataclass(frozen=True)
class StaticTransition(Guidance):
    """Static transition point (Jain et al., CVPR 2025): weight ``w1`` while t > ``tau``, ``w`` once t ≤ ``tau``.

    ``w1 = 0`` is pure ε_u early ("no guidance"), ``w1 < 0`` is opposite guidance. ``tau`` is in the model's own
    timestep units (Jain: τ = 500 with w1 = 0; τ = 650 with w1 = −2)."""

    w: float = 7.5
    tau: float = 500.0
    w1: float = 0.0

    def __post_init__(self):
        _check_weight("w", self.w)
        _check_weight("w1", self.w1)
        _check_weight("tau", self.tau)

    def weight(self, i, num_steps, t, d_hist):
        return self.w1 if t > self.tau else self.w


def opposite_guidance(w: float = 7.5, tau: float = 650.0, s: float = 2.0) -> StaticTransition:
    """Opposite guidance (Jain et al., CVPR 2025): ε_u − s·(ε_c − ε_u) while t > τ, then weight ``w``."""
    if _check_weight("s", s) <= 0:
        raise ValueError(f"opposite-guidance strength s must be > 0, got {s!r}")
    return StaticTransition(w=w, tau=tau, w1=-s)


def first_local_min(d_hist: Tensor) -> Tensor:
    """Per sample, whether a local minimum d_{j−1} > d_j < d_{j+1} has occurred in ``d_hist`` [steps, B]."""
    if d_hist.shape[0] < 3:
        return torch.zeros(d_hist.shape[1], dtype=torch.bool, device=d_hist.device)
    d = d_hist
    is_min = (d[:-2] > d[1:-1]) & (d[1:-1] < d[2:])
    return is_min.any(dim=0)


@dataclass(frozen=True)
class DynamicTransition(Guidance):
    """Dynamic transition point (Jain et al., CVPR 2025): weight ``w_early`` until the first local minimum of
    d_t = ‖ε_c − ε_u‖₂ in step order (d_{i−2} > d_{i−1} < d_i), then ``w`` from step i on; per sample.

    ``w_early = 1`` is the plain conditional model (Jain's DTP); ``w_early = −s`` is OG + DTP."""

    w: float = 7.5
    w_early: float = 1.0

    def __post_init__(self):
        _check_weight("w", self.w)
        _check_weight("w_early", self.w_early)

    def weight(self, i, num_steps, t, d_hist):
        switched = first_local_min(d_hist)
        return torch.where(switched, self.w, self.w_early).to(torch.float64)


GUIDANCE = {"constant": Constant, "window": Window, "static": StaticTransition, "dynamic": DynamicTransition}
