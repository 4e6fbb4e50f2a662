"""Training-set duplicate finder: exact and near-duplicate groups with per-image counts.

Duplication drives memorization: the images diffusion models reproduce are mostly the ones repeated in their
training set (Carlini et al., USENIX Security 2023; Somepalli et al., CVPR 2023; Webster, arXiv 2305.08694).
Exact groups come from hashing each item's bytes (checked element by element, so a hash collision cannot merge two
different images). Near-duplicate groups are the connected components of the graph "within ``threshold``"
(single linkage: A~B and B~C put A, B, C in one group even when A and C are farther apart); each item's direct
``neighbours`` count is reported beside its group size, since chains can make components large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.results import Result
from diffmem.similarity.retrieval import DEFAULT_MAX_MEMORY, flatten_checked, radius_pairs

__all__ = ["DuplicateGroups", "exact_groups", "exact_duplicates", "near_duplicates", "NEAR_METRICS"]

NEAR_METRICS = ("l2", "normalized_l2", "cosine")


def exact_groups(x: Tensor) -> tuple[Tensor, Tensor]:
    """(first index of each distinct item [U], group of every item [M] in 0..U−1), in first-occurrence order.

    >>> first, inverse = exact_groups(torch.tensor([[1.0], [2.0], [1.0]]))
    >>> first.tolist(), inverse.tolist()
    ([0, 1], [0, 1, 0])
    """
    flat = flatten_checked(x, "x")
    buckets: dict[int, list[int]] = {}  # hash → representatives (several only on a hash collision)
    first: list[int] = []
    inverse = [0] * len(flat)
    row0 = 0
    for piece in flat.detach().split(max(1, 2**22 // flat.shape[1])):  # ≤ 16 MiB copies at a time
        # + 0 turns −0.0 into 0.0 so equal values hash equally
        arr = (piece + 0 if piece.is_floating_point() else piece).cpu().contiguous().numpy()
        for offset, row in enumerate(arr):
            i, h = row0 + offset, hash(row.tobytes())
            group = _match(buckets.get(h, ()), first, flat, i)
            if group is None:
                group = len(first)
                buckets.setdefault(h, []).append(group)
                first.append(i)
            inverse[i] = group
        row0 += len(arr)
    return torch.tensor(first, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def _match(groups, first: list[int], flat: Tensor, i: int) -> int | None:
    """The group among ``groups`` (same hash) whose representative equals row i, if any."""
    for g in groups:
        if torch.equal(flat[first[g]], flat[i]):
            return g
    return None


@dataclass(frozen=True)
class DuplicateGroups(Result):
    """Duplicate structure of a set of M items.

    Attributes:
        representative: [M] the smallest index in each item's group (an item is its own when it is unique).
        group_size: [M] number of items in the item's group (1 = unique).
        neighbours: [M] number of *other* items within the threshold (equals group_size − 1 for exact groups).
        metric: ``"exact"``, ``"l2"``, ``"normalized_l2"`` or ``"cosine"``.
        threshold: distance (l2 kinds, inclusive) or similarity (cosine, inclusive) used; ``None`` for exact.
    """

    representative: Tensor
    group_size: Tensor
    neighbours: Tensor
    metric: str
    threshold: float | None = None

    @property
    def duplicated(self) -> Tensor:
        """Bool [M]: the item has at least one duplicate."""
        return self.group_size > 1

    @property
    def groups(self) -> list[list[int]]:
        """Index lists of the groups with ≥ 2 members, ordered by their smallest index."""
        dup = self.duplicated.nonzero().flatten()
        out: dict[int, list[int]] = {}
        for i in dup.tolist():
            out.setdefault(int(self.representative[i]), []).append(i)
        return [out[r] for r in sorted(out)]

    def summary(self) -> dict:
        """Counts for reports: items, distinct groups, duplicated items, largest group."""
        return {"metric": self.metric, "threshold": self.threshold, "items": len(self.group_size),
                "groups": int(self.representative.unique().numel()), "duplicated_items": int(self.duplicated.sum()),
                "largest_group": int(self.group_size.max())}


def _from_labels(labels: Tensor, neighbours: Tensor, metric: str, threshold) -> DuplicateGroups:
    size = torch.bincount(labels)[labels]
    rep = torch.full((int(labels.max()) + 1,), len(labels), dtype=torch.long)
    rep.scatter_reduce_(0, labels, torch.arange(len(labels)), reduce="amin")
    return DuplicateGroups(rep[labels], size, neighbours, metric, threshold)


def exact_duplicates(x: Tensor) -> DuplicateGroups:
    """Groups of bit-identical items (−0.0 = 0.0) in x [M, ...]."""
    _, inverse = exact_groups(x)
    return _from_labels(inverse, torch.bincount(inverse)[inverse] - 1, "exact", None)


def near_duplicates(x: Tensor, threshold: float, *, metric: str = "l2",
                    max_memory: int = DEFAULT_MAX_MEMORY) -> DuplicateGroups:
    """Near-duplicate groups of x [M, ...]: connected components of "within ``threshold``" (inclusive).

    ``metric``: ``"l2"`` (‖a − b‖ ≤ threshold), ``"normalized_l2"`` (‖a − b‖/√D ≤ threshold, Carlini et al.'s
    per-dimension scale) or ``"cosine"`` (cos(a, b) ≥ threshold, e.g. on SSCD descriptors).

    >>> near_duplicates(torch.tensor([[0.0], [0.05], [1.0]]), 0.1).group_size.tolist()
    [2, 2, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    flat = flatten_checked(x, "x")
    flat = flat if flat.is_floating_point() else flat.to(torch.get_default_dtype())
    if metric not in NEAR_METRICS:
        raise ValueError(f"metric must be one of {NEAR_METRICS}, got {metric!r}")
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"near-duplicate threshold must be a finite number, got {threshold!r}")
    radius = {"l2": threshold, "normalized_l2": threshold * flat.shape[1] ** 0.5,
              "cosine": (2 - 2 * min(threshold, 1.0)) ** 0.5}[metric]
    if metric == "cosine":  # on unit vectors cos ≥ τ ⇔ ‖a − b‖ ≤ √(2 − 2τ)
        if not -1 <= threshold <= 1:
            raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold!r}")
        flat = torch.nn.functional.normalize(flat, dim=1)
    elif threshold < 0:
        raise ValueError(f"distance threshold must be >= 0, got {threshold!r}")
    i, j = radius_pairs(flat, flat, radius, max_memory=max_memory)
    m = len(flat)
    graph = coo_matrix((torch.ones(len(i)).numpy(), (i.cpu().numpy(), j.cpu().numpy())), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    neighbours = torch.bincount(i.cpu(), minlength=m) - 1  # minus the item itself
    return _from_labels(torch.from_numpy(labels).long(), neighbours, metric, threshold)
