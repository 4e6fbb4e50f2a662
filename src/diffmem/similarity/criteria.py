"""Memorization criteria on nearest-neighbour distances and on similarity scores.

- Ratio rule (Ye et al., 2025, §7; Gu et al., TMLR 2025; Yoon et al., 2023): a sample x is a copy when
  ‖x − a₁‖ / ‖x − a₂‖ ≤ 1/3 (inclusive) for its nearest and second-nearest training points a₁, a₂; the
  memorization ratio is the share of samples that are copies.
- Relative distance (Carlini et al., USENIX Security 2023; IET-AGC's "MQ"): r = D₁ / mean_{j ≤ k} D_j with
  D_j the (squared, by default) distance to the j-th nearest training point; small r = memorized.
- Threshold labels on a similarity or distance, with the direction declared.

Exact duplicates in the reference set would make a₂ = a₁, so every near-copy of a duplicated image would get
ratio ≈ 1 and look "not memorized". With ``dedup=True`` (the default) diffmem applies the rules to the *distinct*
references (duplicates collapsed first, :func:`~diffmem.similarity.duplicates.exact_groups`), so a₂ is a different
image; indices returned still point into the original ``refs`` (the first occurrence of a₁). ``dedup=False``
keeps the raw rule; there a query at distance 0 from both a₁ and a₂ gets ratio 0 (a copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmem.similarity.duplicates import exact_groups
from diffmem.similarity.retrieval import knn

__all__ = ["COPY_RATIO", "unique_refs", "nn_ratio", "is_copy", "memorization_ratio", "relative_distance",
           "threshold_labels"]

COPY_RATIO = 1 / 3


def unique_refs(refs: Tensor) -> tuple[Tensor, Tensor]:
    """(distinct references in first-occurrence order, inverse index [M] mapping each reference to its row)."""
    first, inverse = exact_groups(refs)
    return (refs if len(first) == len(refs) else refs[first]), inverse


def _distinct(refs: Tensor, dedup: bool, need: int) -> tuple[Tensor, Tensor | None]:
    """(reference set to search, map from its rows to indices in ``refs`` or None when it is ``refs``)."""
    first = None
    if dedup:
        first, _ = exact_groups(refs)
        if len(first) == len(refs):
            first = None
        else:
            refs = refs[first]
    if len(refs) < need:
        kind = "distinct " if dedup else ""
        raise ValueError(f"the reference set needs at least {need} {kind}items, got {len(refs)}")
    return refs, first


def nn_ratio(queries: Tensor, refs: Tensor, *, dedup: bool = True, chunk_size: int = 1024,
             **knn_kw) -> tuple[Tensor, Tensor]:
    """(‖x − a₁‖ / ‖x − a₂‖ per query [N], index of a₁ in ``refs`` [N]); a query equal to a₁ has ratio 0.

    ``knn_kw`` go to :func:`~diffmem.similarity.retrieval.knn` (``backend``, ``max_memory``, ``device``, ...).

    >>> refs = torch.tensor([[0.0], [3.0], [3.0]])
    >>> nn_ratio(torch.tensor([[2.5]]), refs)[0], nn_ratio(torch.tensor([[2.5]]), refs, dedup=False)[0]
    (tensor([0.2000]), tensor([1.]))
    """
    search, first = _distinct(refs, dedup, 2)
    d, j = knn(queries, search, 2, chunk_size=chunk_size, **knn_kw)
    nearest = j[:, 0] if first is None else first.to(j.device)[j[:, 0]]
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


def relative_distance(queries: Tensor, refs: Tensor, *, k: int = 50, squared: bool = True, dedup: bool = True,
                      **knn_kw) -> tuple[Tensor, Tensor]:
    """(r = D₁ / mean_{j=1..k} D_j per query [N], index of NN₁ in ``refs`` [N]); NN₁ is inside the mean.

    D_j = ‖x − NN_j‖² when ``squared`` (IET-AGC's ``compute_l1.py``), else ‖x − NN_j‖; r ∈ [0, 1], 0 for an exact
    copy. Whether Carlini et al. squared is unverified, hence the parameter; record it.

    >>> r, _ = relative_distance(torch.tensor([[0.0]]), torch.tensor([[1.0], [2.0], [3.0]]), k=3, squared=False)
    >>> r.tolist()
    [0.5]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    search, first = _distinct(refs, dedup, k)
    d, j = knn(queries, search, k, **knn_kw)
    d = d.square() if squared else d
    mean = d.mean(1)
    r = torch.where(mean > 0, d[:, 0] / mean.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(mean))
    return r, (j[:, 0] if first is None else first.to(j.device)[j[:, 0]])


def threshold_labels(scores: Tensor, threshold: float, *, higher_is_copy: bool, inclusive: bool = False) -> Tensor:
    """Boolean copy labels from a similarity (``higher_is_copy=True``: s > τ) or distance (False: s < τ).

    ``inclusive`` turns > / < into ≥ / ≤. The direction is declared, never inferred;
    e.g. SSCD "replicated" = cosine > 0.5 (Somepalli et al.), tiled-L2 copy = distance < a calibrated τ.

    >>> threshold_labels(torch.tensor([0.2, 0.5, 0.9]), 0.5, higher_is_copy=True).tolist()
    [False, False, True]
    """
    scores = torch.as_tensor(scores)
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    if inclusive:
        return scores >= threshold if higher_is_copy else scores <= threshold
    return scores > threshold if higher_is_copy else scores < threshold
