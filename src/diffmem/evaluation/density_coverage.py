"""Density and coverage (Naeem, Oh, Uh, Choi & Yoo, ICML 2020), k = 5 by default as in the paper.

With B(x_i) the ball around real point x_i of radius = distance to its k-th nearest real neighbour:
density = (1 / (k·M)) Σ_j Σ_i 1[y_j ∈ B(x_i)] (how many real balls hold each generated point; ≈ 1 for matching
distributions, unbounded above) and coverage = (1/N) Σ_i 1[∃ j: y_j ∈ B(x_i)] (share of real balls that hold a
generated point). Only real-sample balls are used, which makes both robust to outliers among the generated points.
Ball membership is inclusive (≤).
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the doctest)
from torch import Tensor

from diffmem.evaluation.precision_recall import knn_radii
from diffmem.similarity.retrieval import as_pair, count_within, knn

__all__ = ["density_coverage"]


def density_coverage(real: Tensor, fake: Tensor, *, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of generated features ``fake`` [M, F] against real features ``real`` [N, F].

    >>> real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    >>> density_coverage(real, torch.tensor([[0.0], [0.1], [9.0]]), k=1)
    (1.3333333333333333, 0.5)
    """
    real, fake = as_pair(real, fake, ("real", "fake"))
    radii = knn_radii(real, k)
    density = count_within(fake, real, radii).sum().item() / (k * len(fake))
    nearest_fake, _ = knn(real, fake, 1)
    coverage = (nearest_fake[:, 0] <= radii).double().mean().item()
    return float(density), float(coverage)
