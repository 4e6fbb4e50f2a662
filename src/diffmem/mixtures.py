"""Gaussian mixtures: the closed-form law under the VP forward process, and Ye et al.'s mixture data.

Below both the embedded worlds and the theory lab. Ye, Zhu, Tao & Chen (2025, §2.3–2.6): data
x₀ ~ Σ_k w_k N(μ_k, Σ) with one shared Σ = U diag(λ) Uᵀ, noised as x_t = α x₀ + σ z with α = sqrt(ᾱ), σ² = 1 − ᾱ
(for the OU process of the paper ᾱ = e^{−t}; any discrete ᾱ table works the same). Then
p_t = Σ_k w_k N(α μ_k, A), A = α² Σ + σ² I, and with π_k(x) the posterior weights
    score      ∇log p_t(x)   = −A⁻¹ (x − α Σ_k π_k μ_k)
    Hessian    ∇²log p_t(x)  = −σ⁻² I + α² σ⁻⁴ Cov[x₀ | x_t = x]           (§2.6)
    posterior  Cov[x₀ | x_t] = Σ − α² Σ A⁻¹ Σ + σ⁴ A⁻¹ Cov_π(μ) A⁻¹.
The *empirical* law of a training set is the case Σ = 0, μ_k = x_i (its score is ∇log p̂_t of §2.3).

All sums over components are streamed in chunks with a running log-sum-exp, so 100k components never build a
[B, n] matrix larger than one chunk, and the softmax never overflows at small t.

The data of Ye et al. (§6.1), :class:`GMMWorld`: K = 8 components N(μ_k, I_d) with μ_k ~ N(0, 4 I_d) drawn once
per world seed, any d (:func:`gmm_world`); the 2-D teaser of their Fig. 2 (:func:`gmm_2d`): K = 4 components
N(μ_k, I) at (±3, ±3) (the paper does not give the means; ours). Training sets are *nested*: rows are drawn in
blocks of 1024, each block from its own generator seeded by (seed, block), so the first n rows of a draw do not
depend on how many rows were asked for. A sweep over n then compares training sets that grow by adding points,
not by redrawing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["GaussianMixture", "Posterior", "alpha_sigma", "GMMWorld", "gmm_world", "gmm_2d", "BLOCK"]

_CHUNK_ELEMENTS = 2**22  # B × chunk logits held at once (32 MiB in float64)


def alpha_sigma(alpha_bar) -> tuple[Tensor, Tensor]:
    """(α, σ²) = (sqrt(ᾱ), 1 − ᾱ): Ye et al.'s α_t and σ_t² (σ_t is the VP std, not diffmem's VE ``sigma``)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ab.sqrt(), 1 - ab


@dataclass(frozen=True)
class Posterior:
    """Posterior of x₀ given x_t under a mixture, in the data basis.

    Attributes:
        mean: E[x₀ | x_t], [B, d] (the Tweedie denoiser).
        comp_mean: Σ_k π_k μ_k, [B, d].
        comp_cov: Cov_π(μ) = Σ_k π_k μ_k μ_kᵀ − comp_mean comp_meanᵀ, [B, d, d] (only when asked for).
        log_density: log p_t(x_t), [B].
        max_weight: max_k π_k(x_t), [B] (1 when the posterior sits on one component).
    """

    mean: Tensor
    comp_mean: Tensor
    comp_cov: Tensor | None
    log_density: Tensor
    max_weight: Tensor


class GaussianMixture:
    """Σ_k w_k N(μ_k, Σ) with a shared covariance; the noised law at any ᾱ in closed form.

    Args:
        means: [K, d] component means (training points for the empirical law).
        cov: a float s² (Σ = s² I; 0 for the empirical law) or a [d, d] symmetric PSD matrix.
        weights: [K] mixture weights (default uniform; normalized here).

    Example:
        >>> gm = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), cov=1.0)
        >>> gm.score(torch.tensor([[1.0, 2.0]], dtype=torch.float64), 0.5).tolist()
        [[-1.0, -2.0]]
    """

    def __init__(self, means: Tensor, cov: float | Tensor = 0.0, weights: Tensor | None = None):
        if not isinstance(means, Tensor) or means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(f"means must be a non-empty [K, d] tensor, got {getattr(means, 'shape', means)!r}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means contain NaN or inf")
        K, d = means.shape
        self.means, self.dim = means, d
        self.lam, self.U = _eigen(cov, d, means.dtype)
        self.means_rot = means if self.U is None else means @ self.U
        w = torch.full((K,), 1.0 / K, dtype=means.dtype) if weights is None else torch.as_tensor(weights)
        if w.shape != (K,) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be [{K}] non-negative with positive sum, got {w!r}")
        self.log_weights = (w / w.sum()).to(means.dtype).log()

    @classmethod
    def empirical(cls, X_train: Tensor) -> GaussianMixture:
        """The empirical law (1/n) Σ_i δ_{x_i}; noised, (1/n) Σ_i N(α x_i, σ² I) (Ye et al., §2.3)."""
        return cls(X_train.flatten(1), cov=0.0)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def cov_eigenvalues(self) -> Tensor:
        return self.lam

    # --- the streamed posterior -------------------------------------------------------------------------

    def posterior(self, x: Tensor, alpha_bar, *, second: bool = False, allowed: Tensor | None = None,
                  chunk_size: int | None = None) -> Posterior:
        """Posterior moments at noisy points ``x`` [B, d] and ᾱ (float or [B]).

        ``second`` also accumulates Cov_π(μ) (for Hessians); ``allowed`` [B, K] masks components per row
        (class conditioning)."""
        x, ab = self._check(x, alpha_bar)
        xr = x if self.U is None else x @ self.U.to(x)
        alpha, a = ab.sqrt(), ab * self.lam.to(x) + (1 - ab)  # [B, 1], [B, d]: diagonal of A in the eigenbasis
        if bool((a <= 0).any()):
            raise ValueError(f"alpha_bar = 1 needs a non-singular covariance (A = Σ), got eigenvalues "
                             f"{self.lam.min().item():.3g}..")
        inv_a = 1 / a
        acc = _stream(alpha * xr * inv_a, ab * inv_a, self.means_rot.to(x), self.log_weights.to(x),
                      second, allowed, chunk_size or max(1, _CHUNK_ELEMENTS // x.shape[0]))
        lse, mbar, cov_pi, m_max = acc
        const = -0.5 * (xr * xr * inv_a).sum(1) - 0.5 * torch.log(2 * math.pi * a).sum(1)
        mean_rot = (1 - ab) * inv_a * mbar + alpha * self.lam.to(x) * inv_a * xr
        return Posterior(self._back(mean_rot), self._back(mbar), None if cov_pi is None else self._back2(cov_pi),
                         lse + const, torch.exp(m_max - lse))

    # --- derived quantities -------------------------------------------------------------------------------

    def x0_mean(self, x: Tensor, alpha_bar, **kw) -> Tensor:
        """Tweedie denoiser E[x₀ | x_t = x], [B, d]."""
        return self.posterior(x, alpha_bar, **kw).mean

    def score(self, x: Tensor, alpha_bar, **kw) -> Tensor:
        """∇log p_t(x) = −A⁻¹ (x − α Σ_k π_k μ_k), [B, d] (§2.5; §2.3 for the empirical law)."""
        x, ab = self._check(x, alpha_bar)
        post = self.posterior(x, ab.flatten(), **kw)
        return self._apply_inv_a(x - ab.sqrt() * post.comp_mean, ab, power=1).neg()

    def log_prob(self, x: Tensor, alpha_bar=1.0, **kw) -> Tensor:
        """log p_t(x), [B]; ᾱ = 1 (default) is the data density itself (needs Σ non-singular)."""
        return self.posterior(x, alpha_bar, **kw).log_density

    def posterior_cov(self, x: Tensor, alpha_bar, **kw) -> Tensor:
        """Cov[x₀ | x_t = x] = Σ − α²ΣA⁻¹Σ + σ⁴ A⁻¹ Cov_π(μ) A⁻¹, [B, d, d]."""
        x, ab = self._check(x, alpha_bar)
        post = self.posterior(x, ab.flatten(), second=True, **kw)
        s2 = 1 - ab[:, :, None]
        within = self._back2(torch.diag_embed(self.lam.to(x) * (1 - ab) / (ab * self.lam.to(x) + 1 - ab)))
        return within + s2**2 * self._apply_inv_a(self._apply_inv_a(post.comp_cov, ab, 1).mT, ab, 1)

    def hessian(self, x: Tensor, alpha_bar, **kw) -> Tensor:
        """∇²log p_t(x) = −σ⁻² I + α² σ⁻⁴ Cov[x₀ | x_t = x], [B, d, d] (Ye et al., §2.6)."""
        x, ab = self._check(x, alpha_bar)
        cov = self.posterior_cov(x, ab.flatten(), **kw)
        s2 = (1 - ab)[:, :, None]
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return -eye / s2 + ab[:, :, None] / s2**2 * cov

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x [n, d], component index [n]) drawn i.i.d. from the mixture (no noise)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        k = torch.multinomial(self.log_weights.exp().double(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        z = z * self.lam.sqrt()
        return self.means[k] + (z if self.U is None else z @ self.U.T), k

    # --- helpers ------------------------------------------------------------------------------------------

    def _check(self, x: Tensor, alpha_bar) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got {getattr(x, 'shape', type(x).__name__)}")
        ab = torch.as_tensor(alpha_bar, dtype=x.dtype).to(x.device)
        ab = ab.expand(x.shape[0]) if ab.ndim == 0 else ab
        if ab.shape != (x.shape[0],) or not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError(f"alpha_bar must be in (0, 1], scalar or [{x.shape[0]}], got {alpha_bar!r}")
        return x, ab[:, None]

    def _apply_inv_a(self, v: Tensor, ab: Tensor, power: int) -> Tensor:
        """A⁻ᵖ v for v [B, d] (or A⁻¹ applied to the last axis of [B, d, d])."""
        a = ab * self.lam.to(v) + (1 - ab)  # [B, d]
        if v.ndim == 3:
            a = a[:, None, :]
        if self.U is None:
            return v / a**power
        U = self.U.to(v)
        return ((v @ U) / a**power) @ U.T

    def _back(self, v: Tensor) -> Tensor:
        return v if self.U is None else v @ self.U.T.to(v)

    def _back2(self, m: Tensor) -> Tensor:
        if self.U is None:
            return m
        U = self.U.to(m)
        return U @ m @ U.T


def _eigen(cov, d: int, dtype) -> tuple[Tensor, Tensor | None]:
    """(eigenvalues [d], eigenvectors or None when Σ is isotropic)."""
    if isinstance(cov, Tensor) and cov.ndim == 2:
        if cov.shape != (d, d) or not torch.allclose(cov, cov.T):
            raise ValueError(f"cov must be a symmetric [{d}, {d}] matrix, got shape {tuple(cov.shape)}")
        lam, U = torch.linalg.eigh(cov.to(dtype))
        if bool((lam < -1e-10 * lam.abs().max().clamp(min=1)).any()):
            raise ValueError(f"cov must be positive semi-definite, got eigenvalue {lam.min().item():.3g}")
        return lam.clamp(min=0), U
    s2 = float(cov)
    if not s2 >= 0 or not math.isfinite(s2):
        raise ValueError(f"isotropic component variance must be a finite number >= 0, got {cov!r}")
    return torch.full((d,), s2, dtype=dtype), None


def _stream(xa: Tensor, ab_inv_a: Tensor, mu: Tensor, log_w: Tensor, second: bool, allowed: Tensor | None,
            chunk: int):
    """Running log-sum-exp over components of logits_k = xa·μ_k − ½ Σ_j ᾱ μ_kj²/a_j + log w_k.

    Returns (lse [B], Σ π_k μ_k [B, d], Cov_π(μ) [B, d, d] or None, max logit [B])."""
    B, d = xa.shape
    m = torch.full((B,), -math.inf, dtype=xa.dtype, device=xa.device)
    s = torch.zeros(B, dtype=xa.dtype, device=xa.device)
    S1 = torch.zeros(B, d, dtype=xa.dtype, device=xa.device)
    S2 = torch.zeros(B, d, d, dtype=xa.dtype, device=xa.device) if second else None
    for lo in range(0, mu.shape[0], chunk):
        mu_c = mu[lo:lo + chunk]
        logits = xa @ mu_c.T - 0.5 * ab_inv_a @ (mu_c * mu_c).T + log_w[lo:lo + chunk]
        if allowed is not None:
            logits = logits.masked_fill(~allowed[:, lo:lo + chunk].to(logits.device), -math.inf)
        m_new = torch.maximum(m, logits.max(1).values)
        ref = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # all masked so far: no NaN
        scale, p = torch.exp(m - ref), torch.exp(logits - ref[:, None])
        s = s * scale + p.sum(1)
        S1 = S1 * scale[:, None] + p @ mu_c
        if S2 is not None:
            S2 = S2 * scale[:, None, None] + torch.einsum("bc,cd,ce->bde", p, mu_c, mu_c)
        m = m_new
    mbar = S1 / s[:, None]
    cov = None if S2 is None else S2 / s[:, None, None] - mbar[:, :, None] * mbar[:, None, :]
    ref = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return ref + torch.log(s), mbar, cov, m


# --- Ye et al.'s mixture data -------------------------------------------------------------------------------------

BLOCK = 1024  # rows per independently seeded block of a training set


@dataclass(frozen=True, eq=False)
class GMMWorld:
    """A Gaussian mixture (1/K) Σ_k N(μ_k, s² I) with its means fixed.

    Attributes:
        means: [K, d] component means μ_k.
        var: component variance s² (Ye et al. use 1).
        seed: the seed the means were drawn with (-1 for hand-placed means).
        name: identifier recorded in provenance.

    Example:
        >>> world = gmm_world(dim=4, seed=0)
        >>> x, k = world.sample(3, seed=1)
        >>> x.shape, world.log_prob(x).shape
        (torch.Size([3, 4]), torch.Size([3]))
    """

    means: Tensor
    var: float = 1.0
    seed: int = -1
    name: str = "gmm"

    def __post_init__(self):
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(self.means.shape)}")
        if not self.var > 0:
            raise ValueError(f"component variance must be > 0, got {self.var!r}")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def mixture(self) -> GaussianMixture:
        """The true data law as a :class:`GaussianMixture` (noised law, score and Hessian at any ᾱ)."""
        return GaussianMixture(self.means, cov=self.var)

    def sample(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """(x [n, d], component index [n]): n i.i.d. draws; a prefix of a larger draw with the same seed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        xs, ks = [], []
        for b in range((n + BLOCK - 1) // BLOCK):
            g = torch.Generator().manual_seed(_block_seed(seed, b))
            x, k = self.mixture.sample(BLOCK, generator=g)  # always a full block: prefixes stay fixed
            xs.append(x), ks.append(k)
        return torch.cat(xs)[:n], torch.cat(ks)[:n]

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_data(x) under the true mixture, [B] (Ye et al.'s mean log-likelihood averages it)."""
        return self.mixture.log_prob(x, 1.0)

    def score(self, x: Tensor, alpha_bar) -> Tensor:
        """True score ∇log p_t(x) of the noised data at ᾱ, [B, d]."""
        return self.mixture.score(x, alpha_bar)

    def describe(self) -> dict:
        return {"world": self.name, "dim": self.dim, "components": self.num_components, "var": self.var,
                "seed": self.seed}


def _block_seed(seed: int, block: int) -> int:
    # SeedSequence mixes (seed, block) so neighbouring seeds do not give overlapping streams
    return int(np.random.SeedSequence([seed, block]).generate_state(1, dtype=np.uint64)[0] >> 1)


def gmm_world(dim: int, *, components: int = 8, mean_var: float = 4.0, var: float = 1.0, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> GMMWorld:
    """Ye et al.'s main world: μ_k ~ N(0, ``mean_var`` I_d) i.i.d., components N(μ_k, ``var`` I_d)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(f"components must be a positive int, got {components!r}")
    if not mean_var >= 0:
        raise ValueError(f"mean_var must be >= 0, got {mean_var!r}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=g, dtype=dtype) * mean_var**0.5
    return GMMWorld(means, var=float(var), seed=seed, name=f"gmm-d{dim}-k{components}")


def gmm_2d(*, offset: float = 3.0, var: float = 1.0, dtype: torch.dtype = torch.float64) -> GMMWorld:
    """The 2-D teaser world (Fig. 2): K = 4 components N(μ_k, ``var`` I) at (±offset, ±offset)."""
    s = torch.tensor([-1.0, 1.0], dtype=dtype)
    means = torch.cartesian_prod(s, s) * offset
    return GMMWorld(means, var=float(var), seed=-1, name="gmm-2d-k4")
