"""The finite training law D_K = Σ_j π_j δ(u_j) of a subject, exactly (Kim, Kim & Lee, 2025, revised theory).

A model trained on rows drawn uniformly from a training set, with the condition dropped for CFG, learns as its
unconditional law the empirical law of its rows: atoms u_j (the distinct training samples) with masses
π_j = n_j / N (n_j rows of sample j among N). Under the VP forward process x_t = α_t u + σ_t ε the posterior over
atoms at (x_t, t) is w_j ∝ π_j exp(−‖x_t − α_t u_j‖² / (2 σ_t²)); its mean x̄_K(t, x_t) = Σ_j w_j u_j is the exact
unconditional denoiser. Everything is float64 and streamed over the atoms in chunks (the streamed log-sum-exp of
:class:`~diffmem.mixtures.GaussianMixture`), so memory stays bounded by one chunk whatever the training set size.

Symbols (``docs/notation.md``): π_j masses, μ = Σ π_j u_j the law's mean, p_t the posterior mass of the target x*,
R = max_j ‖u_j − x*‖ the law's radius around x*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mixtures import GaussianMixture
from diffmem.subject import Subject

__all__ = ["FiniteLaw", "finite_law"]


@dataclass(frozen=True, eq=False)
class FiniteLaw:
    """Atoms [K, d] (float64, distinct) with masses [K] summing to 1; ``chunk`` atoms per streamed block."""

    atoms: Tensor
    masses: Tensor
    chunk: int | None = None

    def __post_init__(self):
        if self.atoms.ndim != 2 or self.masses.shape != (self.atoms.shape[0],):
            raise ValueError(f"need atoms [K, d] and masses [K], got {tuple(self.atoms.shape)} and "
                             f"{tuple(self.masses.shape)}")
        object.__setattr__(self, "atoms", self.atoms.to(torch.float64))
        object.__setattr__(self, "masses", (self.masses / self.masses.sum()).to(torch.float64))
        object.__setattr__(self, "_mixture", GaussianMixture(self.atoms, cov=0.0, weights=self.masses))

    @property
    def dim(self) -> int:
        return self.atoms.shape[1]

    @property
    def mean(self) -> Tensor:
        """μ = Σ_j π_j u_j, [d]."""
        return self.masses @ self.atoms

    def index(self, x: Tensor) -> int:
        """The atom equal to ``x`` (exactly, after a float64 cast), or −1 when ``x`` is not an atom of the law."""
        hit = (self.atoms == x.flatten().to(torch.float64)).all(1).nonzero()
        return int(hit[0]) if len(hit) else -1

    def radius(self, x: Tensor) -> float:
        """R = max_j ‖u_j − x‖ over the support (chunked)."""
        xf, r = x.flatten().to(torch.float64), 0.0
        for lo in range(0, len(self.atoms), self.chunk or 4096):
            r = max(r, float((self.atoms[lo:lo + (self.chunk or 4096)] - xf).norm(dim=1).max()))
        return r

    def posterior_mean(self, x: Tensor, alpha_bar: float) -> Tensor:
        """x̄_K(t, x) = Σ_j w_j u_j at noisy states ``x`` [B, d] and ᾱ_t < 1 (the exact unconditional denoiser)."""
        self._level(alpha_bar)
        return self._mixture.x0_mean(x.to(torch.float64), float(alpha_bar), chunk_size=self.chunk)

    def log_mass(self, x: Tensor, alpha_bar: float, j: int) -> Tensor:
        """log p_t(x) = log w_j(x): the log posterior mass of atom ``j`` at states ``x`` [B, d] and ᾱ_t < 1.

        Written as log π_j + log N(x; α u_j, σ² I) − log p_t(x), both densities exact, so it stays finite
        where the mass underflows in a softmax."""
        self._level(alpha_bar)
        x = x.to(torch.float64)
        ab = float(alpha_bar)
        s2 = 1 - ab
        own = (-(x - ab**0.5 * self.atoms[j]).pow(2).sum(1) / (2 * s2) - 0.5 * self.dim * math.log(2 * math.pi * s2)
               + self.masses[j].log())
        # a mass is at most 1: a positive log is the round-off of two nearly equal log densities
        return (own - self._mixture.log_prob(x, ab, chunk_size=self.chunk)).clamp(max=0.0)

    @staticmethod
    def _level(alpha_bar: float) -> None:
        if not 0 < float(alpha_bar) < 1:
            raise ValueError(f"posterior over atoms needs 0 < alpha_bar < 1 (ᾱ = 1 is the clean law), got {alpha_bar}")


def finite_law(subject: Subject, *, chunk: int | None = None) -> FiniteLaw:
    """The unconditional training law of ``subject``: its training rows' distinct samples weighted by row counts
    (a duplicated sample weighs its number of rows), else its references with equal masses."""
    if subject.training is not None:
        t = subject.training
        counts = torch.bincount(t.rows, minlength=len(t.images)).to(torch.float64)
        keep = counts > 0  # samples never trained on (held-out images) are not in the law
        return FiniteLaw(t.images[keep].flatten(1), counts[keep], chunk)
    if subject.references is None:
        raise ValueError(f"subject {subject.name!r} has neither training rows nor references: the law is unknown")
    refs = subject.references.flatten(1)
    return FiniteLaw(refs, torch.ones(len(refs), dtype=torch.float64), chunk)
