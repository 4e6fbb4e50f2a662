"""The gmm world: Gaussian-mixture data of Ye, Zhu, Tao & Chen (2025, §6.1), with samplers and log-density.

Main runs: K = 8 components N(μ_k, I_d) with μ_k ~ N(0, 4 I_d) drawn once per world seed, any d. The 2-D teaser
(Fig. 2): K = 4 components N(μ_k, I) at (±3, ±3) (project default for the means, spec §10). Everything is exact:
the world's true score at any noise level and its density come from :class:`~diffmem.theory.mixture.GaussianMixture`.

Training sets are *nested*: rows are drawn in blocks of 1024, each block from its own generator seeded by
(seed, block), so the first n rows of a draw do not depend on how many rows were asked for. A sweep over n then
compares training sets that grow by adding points, not by redrawing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffmem.theory.mixture import GaussianMixture

__all__ = ["GMMWorld", "gmm_world", "gmm_2d", "BLOCK"]

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
