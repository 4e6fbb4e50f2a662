"""Memorization of the two exact scores, and the time at which the empirical posterior collapses.

Ye, Zhu, Tao & Chen (2025, §3): sampling with the empirical score ∇log p̂_t (the exact minimizer of the DSM loss)
returns training points only, while the true score ∇log p_t generates new points. Copies are judged by the 1/3
nearest-neighbour ratio rule (their §7). The *collapse time* is where the empirical posterior w_i(x) concentrates
on one training point: the largest t at which E_{X ~ P̂_t}[max_i w_i(X)] ≥ ``level`` (project definition; the
forward law P̂_t is the marginal of the exact reverse process, so no sampling run is needed for it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmem.mixtures import GaussianMixture, GMMWorld
from diffmem.schedules import NoiseSchedule, VPSDESchedule
from diffmem.similarity.criteria import memorization_ratio
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from diffmem.theory.sampler import SamplerConfig, draw_samples

__all__ = ["score_memorization", "collapse_curve", "collapse_time"]


def score_memorization(world: GMMWorld, X_train: Tensor, *, n_samples: int = 500, seed: int = 0,
                       sampler: SamplerConfig | None = None) -> dict:
    """Sample the empirical and the true score; per model the memorization ratio and mean true log-likelihood.

    Returns ``{"empirical": {...}, "true": {...}}`` with ``memorization_ratio``, ``loglik_mean`` and ``samples``
    [B, d]."""
    sched, sampler = VPSDESchedule(), sampler or SamplerConfig()
    models = {"empirical": GaussianMixtureDenoiser(X_train, sched, name="empirical_score"),
              "true": GaussianMixtureDenoiser(world.means, sched, var=world.var, name="true_score")}
    out = {}
    for name, den in models.items():
        x, prov = draw_samples(den, world.dim, range(seed, seed + n_samples), sampler)
        out[name] = {"memorization_ratio": memorization_ratio(x, X_train),
                     "loglik_mean": float(world.log_prob(x).mean()), "samples": x, "provenance": prov}
    return out


def collapse_curve(X_train: Tensor, ts, *, draws: int = 500, seed: int = 0,
                   schedule: NoiseSchedule | None = None) -> Tensor:
    """E_{X ~ P̂_t}[max_i w_i(X)] at each t of ``ts`` (same draws (i, z) at every t), float64 [len(ts)]."""
    schedule = schedule or VPSDESchedule()
    X = X_train.flatten(1).double()
    emp = GaussianMixture.empirical(X)
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(X.shape[0], (draws,), generator=g)
    z = torch.randn(draws, X.shape[1], generator=g, dtype=torch.float64)
    vals = []
    for t in ts:
        ab = float(schedule.alpha_bar(t))
        x = ab**0.5 * X[i] + (1 - ab) ** 0.5 * z
        vals.append(float(emp.posterior(x, ab).max_weight.mean()))
    return torch.tensor(vals, dtype=torch.float64)


def collapse_time(ts, curve: Tensor, level: float = 0.5) -> float | None:
    """Largest t with curve(t) ≥ ``level``, interpolated linearly in log t; None if the curve never reaches it
    (returns ts[-1] if it never drops below). ``ts`` increasing."""
    ts = [float(t) for t in ts]
    if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"ts must be strictly increasing, got {ts}")
    above = [float(c) >= level for c in curve]
    if not above[0]:
        return None
    j = max(k for k in range(len(ts)) if all(above[: k + 1]))
    if j == len(ts) - 1:
        return ts[-1]
    c0, c1 = float(curve[j]), float(curve[j + 1])
    frac = (c0 - level) / (c0 - c1)
    return math.exp(math.log(ts[j]) + frac * (math.log(ts[j + 1]) - math.log(ts[j])))
