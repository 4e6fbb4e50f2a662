"""Exact nearest-neighbour retrieval over a reference (training) set, memory-bounded by chunking.

Distances are Euclidean on flattened images/features. Queries are processed in chunks so that at most
``chunk × M`` distances exist at once (never the full N × M matrix when it would not fit).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn", "flatten_checked"]


def flatten_checked(x: Tensor, name: str) -> Tensor:
    """[N, ...] → [N, D], rejecting empty or non-finite input with an error naming ``name``."""
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor [N, ...], got {getattr(x, 'shape', type(x).__name__)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x.reshape(x.shape[0], -1)


def knn(queries: Tensor, refs: Tensor, k: int = 2, *, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest references of each query: (distances [N, k] ascending, indices [N, k]).

    ‖q − r‖² = ‖q‖² − 2 q·r + ‖r‖² by one matmul per chunk (the rate-limiting step is that matmul), then the
    top-k are recomputed exactly from the differences so cancellation cannot reorder near-ties.
    """
    q, r = flatten_checked(queries, "queries"), flatten_checked(refs, "refs")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features per item but refs have {r.shape[1]} "
                         f"(shapes {tuple(queries.shape)} vs {tuple(refs.shape)})")
    if not 1 <= k <= r.shape[0]:
        raise ValueError(f"k must be in [1, {r.shape[0]}] (number of refs), got {k!r}")
    r = r.to(q.dtype)
    r2 = (r * r).sum(1)
    dists, idxs = [], []
    for q_chunk in q.split(chunk_size):
        d2 = (q_chunk * q_chunk).sum(1, keepdim=True) - 2 * q_chunk @ r.T + r2
        cand = d2.topk(min(r.shape[0], k + 4), dim=1, largest=False).indices  # a few spares for near-ties
        exact = (q_chunk[:, None, :] - r[cand]).norm(dim=2)
        d, j = exact.topk(k, dim=1, largest=False)
        dists.append(d)
        idxs.append(cand.gather(1, j))
    return torch.cat(dists), torch.cat(idxs)
