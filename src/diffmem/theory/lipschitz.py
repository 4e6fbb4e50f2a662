"""Lipschitz separation of the empirical and the true score (Ye, Zhu, Tao & Chen, 2025, Lemma C.1 and §4.3).

The Lipschitz constant of a score is C_t = sup_x ‖∇²log p_t(x)‖₂. For the empirical law it blows up like σ_t⁻⁴:
    −1/σ² + α² min_{i≠j}‖x_i − x_j‖² / (16 σ⁴)  ≤  C_t  ≤  1/σ² + α² max_{i≠j}‖x_i − x_j‖² / (4 σ⁴)
(the constants 1/16 and 1/4 are our reading of the appendix, not confirmed), while a Gaussian N(μ, Σ) has the
bounded ‖∇²log p_t‖₂ = 1 / (σ² + α² λ_min(Σ)). The measured sup is taken over probe points: draws from p̂_t
plus the midpoints α (x_i + x_{nn(i)}) / 2, where two training points tie and the Hessian is largest.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmem.mixtures import GaussianMixture
from diffmem.similarity.retrieval import knn

__all__ = ["pairwise_extremes", "lipschitz_bounds", "probe_points", "measured_lipschitz", "gaussian_lipschitz"]


def pairwise_extremes(X: Tensor, *, chunk_size: int = 2048) -> tuple[float, float]:
    """(min, max) of ‖x_i − x_j‖ over distinct rows i ≠ j (duplicates collapsed), chunked over rows."""
    uniq = torch.unique(X.flatten(1), dim=0)
    if uniq.shape[0] < 2:
        raise ValueError(f"need at least 2 distinct training points, got {uniq.shape[0]}")
    d_min = float(knn(uniq, uniq, 2, chunk_size=chunk_size)[0][:, 1].min())
    d_max = max(float(torch.cdist(c, uniq).max()) for c in uniq.split(chunk_size))
    return d_min, d_max


def lipschitz_bounds(X_train: Tensor, alpha_bar: float) -> tuple[float, float]:
    """Lemma C.1 (lower, upper) bounds on sup_x ‖∇²log p̂_t(x)‖₂ at ᾱ = α²."""
    d_min, d_max = pairwise_extremes(X_train)
    a2, s2 = float(alpha_bar), 1 - float(alpha_bar)
    return -1 / s2 + a2 * d_min**2 / (16 * s2**2), 1 / s2 + a2 * d_max**2 / (4 * s2**2)


def probe_points(X_train: Tensor, alpha_bar: float, draws: int, generator: torch.Generator) -> Tensor:
    """Draws from p̂_t (α x_i + σ z) and the nearest-pair midpoints α (x_i + x_nn(i)) / 2, [draws + n', d]."""
    X = torch.unique(X_train.flatten(1), dim=0)
    alpha, sigma = float(alpha_bar) ** 0.5, (1 - float(alpha_bar)) ** 0.5
    i = torch.randint(X.shape[0], (draws,), generator=generator)
    z = torch.randn(draws, X.shape[1], generator=generator, dtype=X.dtype)
    nn = knn(X, X, 2)[1][:, 1]
    return torch.cat([alpha * X[i] + sigma * z, alpha * (X + X[nn]) / 2])


def measured_lipschitz(mixture: GaussianMixture, points: Tensor, alpha_bar: float, *, batch_size: int = 256) -> float:
    """max over ``points`` of ‖∇²log p_t‖₂ (largest absolute Hessian eigenvalue), Hessians by §2.6."""
    best = 0.0
    for p in points.split(batch_size):
        eig = torch.linalg.eigvalsh(mixture.hessian(p, alpha_bar))
        best = max(best, float(eig.abs().max()))
    return best


def gaussian_lipschitz(alpha_bar: float, cov_eigenvalues: Tensor) -> float:
    """‖∇²log p_t‖₂ = 1 / (σ² + α² λ_min(Σ)) for Gaussian data N(μ, Σ) (§4.3)."""
    return 1 / ((1 - float(alpha_bar)) + float(alpha_bar) * float(cov_eigenvalues.min()))
