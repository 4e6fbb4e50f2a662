"""The loss gap between the true and the empirical score (Ye, Zhu, Tao & Chen, 2025, Prop. 4.1, Thm. 4.3).

Loss-Gap_t = (1/n) Σ_i [ℓ_t(x_i, ∇log p_t) − ℓ_t(x_i, ∇log p̂_t)] = E_{X ~ P̂_t} ‖∇log p̂_t(X) − ∇log p_t(X)‖².
Three estimates on the same Monte Carlo draws: (a) the direct difference of the DSM losses, with
target −z/σ_t, (b) the Fisher divergence under the *empirical* noised law, and (c) our small-t closed form
(derived here, not in the paper: valid while the empirical posterior sits on one training point)
    Loss-Gap_t ≈ tr((σ⁻¹ I − σ A⁻¹)²) + α² tr(A⁻² Σ),   A = α² Σ + σ² I;   Σ = I: d (1/σ² − 1).
Prop. 4.1 says (a) = (b) in expectation; on the same draws their per-draw difference has mean zero, so they must
agree within its standard error ``diff_se``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from diffmem.mixtures import GaussianMixture
from diffmem.schedules import NoiseSchedule, VPSDESchedule

__all__ = ["GapEstimate", "loss_gap", "loss_gap_closed_form"]


@dataclass(frozen=True)
class GapEstimate:
    """One Monte Carlo estimate of Loss-Gap_t with its standard errors (standard error = std / sqrt(draws))."""

    t: float
    alpha_bar: float
    n: int
    dim: int
    draws: int
    gap: float          # (a) direct DSM-loss difference
    gap_se: float
    fisher: float       # (b) E_{P̂_t} ‖∇log p̂_t − ∇log p_t‖²
    fisher_se: float
    diff_se: float      # standard error of the paired per-draw difference (a) − (b)
    closed_form: float  # (c) the small-t closed form

    def to_dict(self) -> dict:
        return asdict(self)


def loss_gap_closed_form(alpha_bar: float, cov_eigenvalues: Tensor) -> float:
    """Small-t closed form tr((σ⁻¹I − σA⁻¹)²) + α² tr(A⁻²Σ) for components N(μ_k, Σ) (see the module docstring)."""
    lam = cov_eigenvalues.double()
    ab = float(alpha_bar)
    s = (1 - ab) ** 0.5
    a = ab * lam + s**2
    return float(((1 / s - s / a) ** 2).sum() + (ab * lam / a**2).sum())


def loss_gap(X_train: Tensor, truth: GaussianMixture, t: float, *, draws: int = 2000, seed: int = 0,
             schedule: NoiseSchedule | None = None, chunk_size: int | None = None) -> GapEstimate:
    """Estimate Loss-Gap_t by (a), (b), (c) with ``draws`` pairs (i ~ U{1..n}, z ~ N(0, I)), X = α x_i + σ z.

    The draws depend on ``seed`` only, so every t of a curve reuses them (common random numbers).

    Args:
        X_train: [n, d] training set; truth: the data law the training set was drawn from.
        t: model time; ᾱ = ``schedule.alpha_bar(t)`` (default the OU process, ᾱ = e^{−t}).
    """
    schedule = schedule or VPSDESchedule()
    X = X_train.flatten(1).double()
    if X.shape[1] != truth.dim:
        raise ValueError(f"training set has dimension {X.shape[1]} but the true mixture has {truth.dim}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an int >= 2, got {draws!r}")
    ab = float(schedule.alpha_bar(t))
    alpha, sigma = ab**0.5, (1 - ab) ** 0.5
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(X.shape[0], (draws,), generator=g)
    z = torch.randn(draws, X.shape[1], generator=g, dtype=torch.float64)
    x = alpha * X[i] + sigma * z
    s_emp = GaussianMixture.empirical(X).score(x, ab, chunk_size=chunk_size)
    s_true = truth.score(x, ab)
    target = -z / sigma  # the DSM regression target −(X − α x_i)/σ²
    direct = ((target - s_true) ** 2).sum(1) - ((target - s_emp) ** 2).sum(1)
    fisher = ((s_emp - s_true) ** 2).sum(1)

    def se(v: Tensor) -> float:
        return float(v.std() / draws**0.5)

    return GapEstimate(float(t), ab, X.shape[0], X.shape[1], draws, float(direct.mean()), se(direct),
                       float(fisher.mean()), se(fisher), se(direct - fisher),
                       loss_gap_closed_form(ab, truth.cov_eigenvalues))
