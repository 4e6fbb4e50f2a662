"""Memorization criteria on nearest-neighbour distances.

The ratio rule (Ye et al., 2025, §5; Gu et al.): a sample x is a copy when ‖x − a₁‖ / ‖x − a₂‖ ≤ 1/3 for
its nearest and second-nearest training points a₁, a₂ (inclusive). Exact duplicates in the reference set
would make a₂ = a₁ and every copy's ratio 0/0 or 0: diffmem applies the rule to the *distinct* references
(duplicates collapsed first), so a copy of a duplicated image is still a copy and a₂ is a different image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmem.similarity.retrieval import flatten_checked, knn

__all__ = ["COPY_RATIO", "unique_refs", "nn_ratio", "is_copy", "memorization_ratio"]

COPY_RATIO = 1 / 3


def unique_refs(refs: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct references, inverse index [M] mapping each original reference to its distinct row)."""
    flat = flatten_checked(refs, "refs")
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    return uniq.view(-1, *refs.shape[1:]), inverse


def nn_ratio(queries: Tensor, refs: Tensor, *, dedup: bool = True, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(‖x − a₁‖ / ‖x − a₂‖ per query [N], index of a₁ in ``refs`` [N]); a query equal to a₁ has ratio 0."""
    if dedup:
        uniq, inverse = unique_refs(refs)
        if uniq.shape[0] < 2:
            raise ValueError("the reference set needs at least 2 distinct items for the nearest-neighbour ratio")
        d, j = knn(queries, uniq, 2, chunk_size=chunk_size)
        # map the distinct row back to its first occurrence in refs
        first = torch.full((uniq.shape[0],), refs.shape[0], dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(refs.shape[0]), reduce="amin")
        nearest = first[j[:, 0]]
    else:
        d, j = knn(queries, refs, 2, chunk_size=chunk_size)
        nearest = j[:, 0]
    ratio = torch.where(d[:, 1] > 0, d[:, 0] / d[:, 1].clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(d[:, 0]))
    return ratio, nearest


def is_copy(queries: Tensor, refs: Tensor, threshold: float = COPY_RATIO, **kw) -> Tensor:
    """Boolean [N]: ratio ≤ ``threshold`` (inclusive, as in Ye et al.)."""
    if not 0 < threshold < 1:
        raise ValueError(f"ratio threshold must be in (0, 1), got {threshold!r}")
    return nn_ratio(queries, refs, **kw)[0] <= threshold


def memorization_ratio(queries: Tensor, refs: Tensor, threshold: float = COPY_RATIO, **kw) -> float:
    """Fraction of queries that are copies of some reference (Ye et al.'s memorization ratio)."""
    return float(is_copy(queries, refs, threshold, **kw).double().mean())
