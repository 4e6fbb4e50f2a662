"""Fréchet Inception Distance on any features (Heusel et al., NeurIPS 2017).

FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}), the Fréchet (2-Wasserstein) distance between Gaussians
fitted to two feature sets. The features come from any :class:`~diffmem.similarity.features.FeatureExtractor`
(Inception pool3 for the published numbers; the digits classifier on the embedded world), and numbers from
different extractors are not comparable. Moments use the unbiased covariance (as pytorch-fid), in float64.
Tr((Σ_a Σ_b)^{1/2}) is computed as Σ √λ_i of the symmetric PSD matrix Σ_a^{1/2} Σ_b Σ_a^{1/2} (same eigenvalues as
Σ_a Σ_b), which avoids the complex round-off of ``scipy.linalg.sqrtm`` on a non-symmetric product.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "fid"]


def _features(x: Tensor, name: str, min_rows: int = 2) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] == 0:
        raise ValueError(f"{name} must be features [N >= {min_rows}, F], got {tuple(getattr(x, 'shape', ()))}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or inf")
    return x


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """(mean [F], unbiased covariance [F, F]) in float64."""
    f = _features(features, "features")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: Tensor) -> Tensor:
    lam, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * lam.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> float:
    """Fréchet distance between N(μ_a, Σ_a) and N(μ_b, Σ_b).

    >>> frechet_distance(torch.zeros(2), torch.eye(2), torch.ones(2), 4 * torch.eye(2))  # 2 + 2·(2 − 1)²
    4.0
    """
    mu_a, mu_b = (torch.as_tensor(m, dtype=torch.float64).flatten() for m in (mu_a, mu_b))
    sigma_a, sigma_b = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma_a, sigma_b))
    f = len(mu_a)
    if len(mu_b) != f or sigma_a.shape != (f, f) or sigma_b.shape != (f, f):
        raise ValueError(f"moment shapes disagree: mu {tuple(mu_a.shape)}, {tuple(mu_b.shape)}; "
                         f"sigma {tuple(sigma_a.shape)}, {tuple(sigma_b.shape)}")
    root_a = _psd_sqrt(sigma_a)
    tr_covmean = torch.linalg.eigvalsh(root_a @ sigma_b @ root_a).clamp_min(0).sqrt().sum()
    diff = mu_a - mu_b
    return float(diff @ diff + sigma_a.trace() + sigma_b.trace() - 2 * tr_covmean)


def fid(features_a: Tensor, features_b: Tensor) -> float:
    """FID between two feature sets [N_a, F] and [N_b, F] (≥ 2 rows each); 0 for identical sets."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return max(0.0, frechet_distance(*gaussian_stats(a), *gaussian_stats(b)))
