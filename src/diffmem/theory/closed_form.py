"""Exact denoisers: Gaussian mixtures (incl. the empirical distribution of a training set) and a full-covariance
Gaussian. They are the analytic oracles of the test suite and the demo's models.

For data x₀ ~ Σ_k π_k N(μ_k, s² I) and x_t = sqrt(ᾱ) x₀ + sqrt(1 − ᾱ) ε, the posterior mean (Tweedie) is
E[x₀ | x_t] = Σ_k r_k(x_t) [μ_k + g (x_t − sqrt(ᾱ) μ_k)], g = sqrt(ᾱ) s² / v, v = ᾱ s² + 1 − ᾱ,
with responsibilities r_k ∝ π_k N(x_t; sqrt(ᾱ) μ_k, v I). With s² = 0 and μ_k the training points this is the
empirical denoiser, the exact minimizer of the denoising loss that reproduces training points (Ye et al., 2025, §3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmem.denoiser import Denoiser
from diffmem.mixtures import GaussianMixture
from diffmem.schedules import NoiseSchedule

__all__ = ["GaussianMixtureDenoiser", "GaussianDenoiser", "NULL_LABEL"]

NULL_LABEL = -1  # the class id meaning "no condition": the whole mixture


class GaussianMixtureDenoiser(Denoiser):
    """Exact class-conditional denoiser of an isotropic Gaussian mixture.

    The condition is a class id per sample: component k belongs to class ``labels[k]``; ``NULL_LABEL`` conditions
    on the whole mixture, so ε_u is the unconditional posterior mean and CFG is exact.

    Args:
        means: [K, *shape] component means (training points for the empirical denoiser).
        schedule: noise schedule defining ᾱ_t.
        var: component variance s² (0 gives the empirical denoiser).
        cov: optional shared full covariance [d, d] (replaces ``var``).
        chunk_size: components per streamed chunk (default: bounded memory, any number of components).
        weights: [K] mixture weights (default uniform).
        labels: [K] class id of each component (default ``arange(K)``).

    Example:
        >>> from diffmem.schedules import VPSDESchedule
        >>> from diffmem.types import Cond
        >>> den = GaussianMixtureDenoiser(torch.tensor([[1.0, 0.0]]), VPSDESchedule())
        >>> den(torch.zeros(1, 2), 0.5, Cond(torch.tensor([0]))).x0_hat.tolist()
        [[1.0, 0.0]]
    """

    prediction_type = "sample"

    def __init__(self, means: Tensor, schedule: NoiseSchedule, *, var: float = 0.0, weights: Tensor | None = None,
                 labels: Tensor | None = None, name: str = "gaussian_mixture", cov: Tensor | None = None,
                 chunk_size: int | None = None):
        if means.ndim < 2:
            raise ValueError(f"means must be [K, ...], got shape {tuple(means.shape)}")
        if var < 0:
            raise ValueError(f"component variance must be >= 0, got {var!r}")
        K = means.shape[0]
        self.means, self.schedule, self.var, self.name = means, schedule, float(var), name
        self.weights = torch.full((K,), 1.0 / K, dtype=means.dtype) if weights is None else weights.to(means.dtype)
        self.labels = torch.arange(K) if labels is None else labels.long()
        if self.weights.shape != (K,) or self.labels.shape != (K,):
            raise ValueError(f"weights and labels must have shape [{K}]")
        # the streamed mixture (chunked over components, log-sum-exp stable) does the arithmetic
        self.mixture = GaussianMixture(means.flatten(1), cov=self.var if cov is None else cov, weights=self.weights)
        self.chunk_size = chunk_size

    def describe(self) -> dict:
        return {**super().describe(), "components": self.means.shape[0], "var": self.var,
                "full_cov": self.mixture.U is not None}

    def model_output(self, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        x = x_t.flatten(1)
        ab = self.schedule.alpha_bar(t.cpu()).to(x)
        allowed = None
        if not bool((c == NULL_LABEL).all()):
            allowed = (self.labels.to(c.device)[None, :] == c[:, None]) | (c[:, None] == NULL_LABEL)
            if not bool(allowed.any(1).all()):
                raise ValueError(f"class ids {c.tolist()} include one with no mixture component")
        return self.mixture.x0_mean(x, ab, allowed=allowed, chunk_size=self.chunk_size).view_as(x_t)


class GaussianDenoiser(Denoiser):
    """Exact denoiser of N(mean, cov): E[x₀ | x_t] = m + sqrt(ᾱ) Σ (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − sqrt(ᾱ) m).

    Unconditional: the condition is ignored (pass any [B] tensor)."""

    prediction_type = "sample"

    def __init__(self, mean: Tensor, cov: Tensor, schedule: NoiseSchedule, name: str = "gaussian"):
        d = mean.shape[0]
        if mean.ndim != 1 or cov.shape != (d, d):
            raise ValueError(f"need mean [d] and cov [d, d], got {tuple(mean.shape)} and {tuple(cov.shape)}")
        self.mean, self.schedule, self.name = mean, schedule, name
        self.lam, self.U = torch.linalg.eigh(cov)
        if bool((self.lam < -1e-10).any()):
            raise ValueError("cov must be positive semi-definite")

    def model_output(self, x_t: Tensor, t: Tensor, c) -> Tensor:
        ab = self.schedule.alpha_bar(t.cpu()).to(x_t).view(-1, 1)
        lam, U, m = self.lam.to(x_t), self.U.to(x_t), self.mean.to(x_t)
        gain = ab.sqrt() * lam / (ab * lam + 1 - ab)  # [B, d] in the eigenbasis
        z = (x_t.flatten(1) - ab.sqrt() * m) @ U
        return (m + (gain * z) @ U.T).view_as(x_t)
