"""Noise schedules and the only place that converts between ε, x̂₀, v, σ and SNR.

Canonical state is the variance-preserving (VP) latent of DDPM (Ho et al., 2020):
``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps``.
The variance-exploding view of Karras et al. (2022) is ``x_t / sqrt(alpha_bar_t) = x_0 + sigma_t * eps`` with
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``. Symbols: ``docs/notation.md``.

Two kinds of objects live here:

* a :class:`NoiseSchedule` maps a model-facing time ``t`` to ``alpha_bar_t`` (the *training* schedule);
* a :class:`Grid` is the *inference* grid a sampler walks: the timesteps, ``alpha_bar_t`` at each and the
  ``alpha_bar`` each step lands on. :func:`discrete_grid` reproduces diffusers' DDIM/DDPM/Euler spacings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule", "DiscreteSchedule", "VPSDESchedule", "Grid",
    "betas_linear", "betas_scaled_linear", "betas_cosine", "discrete_grid", "continuous_grid",
    "sigma_from_alpha_bar", "alpha_bar_from_sigma", "snr",
    "x0_from_eps", "eps_from_x0", "eps_from_v", "v_from_eps", "x0_from_v", "SPACINGS",
]

SPACINGS = ("leading", "trailing", "linspace")


# --- elementwise conversions (alpha_bar may be a float or a tensor broadcastable to x) --------------------

def sigma_from_alpha_bar(alpha_bar):
    """VE noise level σ = sqrt((1 − ᾱ)/ᾱ) (Karras et al., 2022, Table 1, VP column)."""
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def alpha_bar_from_sigma(sigma):
    """Inverse of :func:`sigma_from_alpha_bar`: ᾱ = 1 / (1 + σ²)."""
    return 1 / (1 + sigma**2)


def snr(alpha_bar):
    """Signal-to-noise ratio ᾱ / (1 − ᾱ) (Kingma et al., 2021)."""
    return alpha_bar / (1 - alpha_bar)


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar) -> Tensor:
    """Tweedie clean estimate x̂₀ = (x_t − sqrt(1 − ᾱ) ε) / sqrt(ᾱ) (Ho et al., 2020, Eq. 15)."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar) -> Tensor:
    """ε = (x_t − sqrt(ᾱ) x̂₀) / sqrt(1 − ᾱ): the noise consistent with a clean estimate."""
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def eps_from_v(x_t: Tensor, v: Tensor, alpha_bar) -> Tensor:
    """ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x_t for v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x₀ (Salimans & Ho, 2022)."""
    return alpha_bar**0.5 * v + (1 - alpha_bar) ** 0.5 * x_t


def x0_from_v(x_t: Tensor, v: Tensor, alpha_bar) -> Tensor:
    """x₀ = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v (Salimans & Ho, 2022)."""
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v


def v_from_eps(x_t: Tensor, eps: Tensor, alpha_bar) -> Tensor:
    """v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x₀, with x₀ implied by (x_t, ε)."""
    x0 = x0_from_eps(x_t, eps, alpha_bar)
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


# --- training schedules -------------------------------------------------------------------------------------

def betas_linear(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM linear betas (Ho et al., 2020), float32 as diffusers builds them."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def betas_scaled_linear(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled_linear" betas: linear in sqrt(β) (Rombach et al., 2022)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2


def betas_cosine(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule ("squaredcos_cap_v2", Nichol & Dhariwal, 2021), β capped at ``max_beta``."""
    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


class NoiseSchedule:
    """Maps model-facing time ``t`` (float or tensor) to ᾱ_t as a float64 tensor."""

    name: str = "schedule"

    def alpha_bar(self, t) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to_dict(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class DiscreteSchedule(NoiseSchedule):
    """A table ᾱ[0..T−1] over integer training timesteps (DDPM-style).

    Fractional ``t`` (diffusers' Euler "linspace") is served by interpolating σ linearly between table entries,
    exactly as ``EulerDiscreteScheduler(interpolation_type="linear")`` does.

    Example:
        >>> s = DiscreteSchedule.from_betas(betas_scaled_linear(), name="scaled_linear")
        >>> round(float(s.alpha_bar(981)), 5)
        0.00578
    """

    alphas_cumprod: Tensor
    name: str = "custom"

    @classmethod
    def from_betas(cls, betas: Tensor, name: str = "custom") -> DiscreteSchedule:
        # float32 cumprod on purpose: it is the table every diffusers checkpoint was trained and sampled with.
        table = torch.cumprod(1.0 - betas.to(torch.float32), dim=0).to(torch.float64)
        return cls(table, name)

    @classmethod
    def named(cls, kind: str, num_train_timesteps: int = 1000, **kw) -> DiscreteSchedule:
        """Build ``"linear"``, ``"scaled_linear"`` or ``"cosine"`` (alias ``"squaredcos_cap_v2"``)."""
        makers = {"linear": betas_linear, "scaled_linear": betas_scaled_linear,
                  "cosine": betas_cosine, "squaredcos_cap_v2": betas_cosine}
        if kind not in makers:
            raise ValueError(f"unknown beta schedule {kind!r}; expected one of {sorted(makers)}")
        return cls.from_betas(makers[kind](num_train_timesteps, **kw), name=kind)

    def __post_init__(self):
        a = self.alphas_cumprod
        if a.ndim != 1 or len(a) < 2 or not bool(((a > 0) & (a < 1)).all()):
            raise ValueError(f"alphas_cumprod must be a 1-D table in (0, 1) with >= 2 entries, got {a!r}")

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < 0) | (t > self.num_train_timesteps - 1)).any()):
            raise ValueError(f"timestep {t.tolist()} outside [0, {self.num_train_timesteps - 1}]")
        lo = t.floor().long()
        if bool((t == lo).all()):
            return self.alphas_cumprod[lo]
        sig = sigma_from_alpha_bar(self.alphas_cumprod)
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        frac = t - lo
        return alpha_bar_from_sigma(sig[lo] * (1 - frac) + sig[hi] * frac)

    def to_dict(self) -> dict:
        return {"kind": "discrete", "name": self.name, "num_train_timesteps": self.num_train_timesteps}


@dataclass(frozen=True)
class VPSDESchedule(NoiseSchedule):
    """Ornstein–Uhlenbeck / VP-SDE with unit β: α_t = e^{−t/2}, so ᾱ_t = e^{−t}.

    Its noise *standard deviation* is √(1 − e^{−t}) (Ye et al. write it σ_t); diffmem's ``sigma`` is always
    the VE noise level √((1 − ᾱ)/ᾱ) (docs/notation.md), so the two differ by the factor α_t.

    The continuous-time process of Ye et al. (2025, §2). ``t`` is continuous in (0, ∞).
    """

    name: str = "vp_sde"

    def alpha_bar(self, t) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool((t <= 0).any()):
            raise ValueError(f"VP-SDE time must be > 0, got {t.tolist()}")
        return torch.exp(-t)

    def to_dict(self) -> dict:
        return {"kind": "vp_sde", "name": self.name}


# --- inference grids ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """The inference grid: step i evaluates the model at ``timesteps[i]`` (where ᾱ = ``alpha_bar[i]``) and
    moves the state to ᾱ = ``alpha_bar_next[i]``. All float64, length = number of steps."""

    timesteps: Tensor
    alpha_bar: Tensor
    alpha_bar_next: Tensor
    spec: dict

    def __post_init__(self):
        n = len(self.timesteps)
        if n == 0 or len(self.alpha_bar) != n or len(self.alpha_bar_next) != n:
            raise ValueError(f"grid arrays must share one non-zero length, got {n}, {len(self.alpha_bar)}, "
                             f"{len(self.alpha_bar_next)}")

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def sigma(self) -> Tensor:
        return sigma_from_alpha_bar(self.alpha_bar)

    def head(self, k: int) -> Grid:
        """The first ``k`` steps of this grid (early-step detectors run only these, through the same loop)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(self):
            raise ValueError(f"head needs an int in [1, {len(self)}], got {k!r}")
        return Grid(self.timesteps[:k], self.alpha_bar[:k], self.alpha_bar_next[:k], {**self.spec, "head": k})


def _spaced_timesteps(T: int, n: int, spacing: str, steps_offset: int, integer: bool) -> np.ndarray:
    # Mirrors diffusers' set_timesteps for DDIM/DDPM (integer=True) and Euler (integer=False).
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n)[::-1]
        return ts.round() if integer else ts
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1] + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")


def discrete_grid(schedule: DiscreteSchedule, num_steps: int, *, spacing: str = "leading",
                  steps_offset: int = 0, next_rule: Literal["grid", "ratio"] = "grid",
                  final: Literal["one", "first"] = "one", integer: bool = True) -> Grid:
    """Inference grid compatible with diffusers' schedulers.

    Args:
        spacing: ``"leading"``, ``"trailing"`` or ``"linspace"`` (diffusers ``timestep_spacing``).
        steps_offset: added to leading timesteps (SD uses 1: 981, 961, …, 1 for 50 steps).
        next_rule: ``"grid"`` lands each step on the next grid timestep (DDPM, Euler); ``"ratio"`` lands on
            ``t − T // num_steps`` as diffusers' DDIM does, even when that is off the grid.
        final: ᾱ after the last step: ``"one"`` (clean; DDPM, Euler, DDIM ``set_alpha_to_one=True``) or
            ``"first"`` (ᾱ[0]; DDIM ``set_alpha_to_one=False``).
        integer: round linspace timesteps (DDIM/DDPM) or keep them fractional (Euler).

    Example:
        >>> g = discrete_grid(DiscreteSchedule.named("scaled_linear"), 50, steps_offset=1)
        >>> g.timesteps[:3].tolist(), g.timesteps[-1].item()
        ([981.0, 961.0, 941.0], 1.0)
    """
    T = schedule.num_train_timesteps
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an int in [1, {T}], got {num_steps!r}")
    if next_rule not in ("grid", "ratio"):
        raise ValueError(f"unknown next_rule {next_rule!r}; expected 'grid' or 'ratio'")
    if final not in ("one", "first"):
        raise ValueError(f"unknown final {final!r}; expected 'one' or 'first'")
    ts = torch.from_numpy(_spaced_timesteps(T, num_steps, spacing, steps_offset, integer).copy())
    ab = schedule.alpha_bar(ts)
    end = torch.tensor([1.0 if final == "one" else float(schedule.alphas_cumprod[0])], dtype=torch.float64)
    if next_rule == "grid":
        ab_next = torch.cat([ab[1:], end])
    else:
        prev = ts - T // num_steps
        ab_next = torch.where(prev >= 0, schedule.alpha_bar(prev.clamp(min=0)), end)
    spec = {"kind": "discrete", "schedule": schedule.to_dict(), "num_steps": num_steps, "spacing": spacing,
            "steps_offset": steps_offset, "next_rule": next_rule, "final": final, "integer": integer}
    return Grid(ts.to(torch.float64), ab, ab_next, spec)


def continuous_grid(schedule: NoiseSchedule, num_steps: int, *, t_max: float, t_min: float,
                    spacing: str = "uniform") -> Grid:
    """Grid from ``t_max`` down to ``t_min`` for continuous-time schedules; the last step lands at ``t_min``
    (sampling stops there, as in Song et al., 2021).

    ``spacing="uniform"`` is linear in t; ``"geometric"`` is linear in log t, which for a VP-SDE near t = 0
    (σ² ≈ t) is linear in log-SNR and puts the steps where first-order solvers make their error.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
    if spacing == "uniform":
        ts = torch.linspace(t_max, t_min, num_steps + 1, dtype=torch.float64)
    elif spacing == "geometric":
        ts = torch.logspace(math.log10(t_max), math.log10(t_min), num_steps + 1, dtype=torch.float64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'uniform' or 'geometric'")
    ab = schedule.alpha_bar(ts)
    spec = {"kind": "continuous", "schedule": schedule.to_dict(), "num_steps": num_steps,
            "t_max": t_max, "t_min": t_min, "spacing": spacing}
    return Grid(ts[:-1], ab[:-1], ab[1:], spec)
