"""Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila, NeurIPS 2019).

Each set's manifold is the union of balls around its points with radius = distance to the point's k-th nearest
neighbour in the same set (k = 3 in the paper). Precision = share of generated points inside the real manifold
(fidelity); recall = share of real points inside the generated manifold (coverage of the data). Memorization can
inflate precision (Ye et al., 2025, §7). Ball membership is inclusive (≤), as in the paper's definition;
the ``prdc`` package uses strict <, which differs only on exact ties (duplicates).
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the doctest)
from torch import Tensor

from diffmem.similarity.retrieval import as_pair, count_within, knn

__all__ = ["knn_radii", "precision_recall"]


def knn_radii(features: Tensor, k: int) -> Tensor:
    """Distance of each point to its k-th nearest *other* point of the same set [N] (the point itself excluded)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[0] <= k:
        raise ValueError(f"need features [N > k={k}, F], got {tuple(getattr(features, 'shape', ()))}")
    d, _ = knn(features, features, k + 1)  # column 0 is the point itself (distance 0)
    return d[:, k]


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` [M, F] against real features ``real`` [N, F].

    >>> real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    >>> precision_recall(real, torch.tensor([[0.5], [1.5], [2.5], [9.0]]), k=1)
    (0.75, 1.0)
    """
    real, fake = as_pair(real, fake, ("real", "fake"))
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    precision = (count_within(fake, real, real_radii) > 0).double().mean()
    recall = (count_within(real, fake, fake_radii) > 0).double().mean()
    return float(precision), float(recall)
