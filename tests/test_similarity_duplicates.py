"""Training-set duplicate finder against brute force (pairwise distances + a plain union-find)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from diffmem.similarity import duplicates
from diffmem.similarity.duplicates import DuplicateGroups, exact_duplicates, exact_groups, near_duplicates


def _components(adj: np.ndarray) -> np.ndarray:
    """Connected-component labels by union-find (independent of scipy.sparse.csgraph)."""
    parent = list(range(len(adj)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(adj), strict=True):
        parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(adj))])


def _set():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 1, 4, 4, generator=g)
    x[[5, 9, 17]] = x[2].clone()  # a group of 4
    x[21] = x[0].clone()  # a pair
    x[25] = torch.full((1, 4, 4), -0.0)  # an all-zero image written with negative zeros ...
    x[26] = torch.zeros(1, 4, 4)  # ... equals the plain zero image (their bytes differ)
    assert x[25].numpy().tobytes() != x[26].numpy().tobytes()
    return x


def test_exact_groups_and_counts():
    x = _set()
    res = exact_duplicates(x)
    assert res.groups == [[0, 21], [2, 5, 9, 17], [25, 26]]
    assert res.group_size[[2, 5, 9, 17, 0, 21, 25, 1]].tolist() == [4, 4, 4, 4, 2, 2, 2, 1]
    assert torch.equal(res.neighbours, res.group_size - 1)
    assert res.representative[17].item() == 2
    assert res.summary()["duplicated_items"] == 8


def test_hash_collisions_cannot_merge_different_items(monkeypatch):
    monkeypatch.setattr(duplicates, "hash", lambda b: 0, raising=False)  # every row in one bucket
    first, inverse = exact_groups(_set())
    assert first.tolist()[:3] == [0, 1, 2] and len(first) == 30 - 3 - 1 - 1
    assert inverse[[2, 5, 9, 17]].unique().numel() == 1 and inverse[0] != inverse[1]


@pytest.mark.parametrize("metric, threshold", [("l2", 1.5), ("normalized_l2", 0.4), ("cosine", 0.8)])
def test_near_duplicates_match_bruteforce(metric, threshold):
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(8, 16, generator=g)
    x = centres[torch.arange(40) % 8] + 0.15 * torch.randn(40, 16, generator=g)
    x[39] = x[0] + 5  # an outlier with a different direction and distance
    a = x.double().numpy()
    if metric == "cosine":
        u = a / np.linalg.norm(a, axis=1, keepdims=True)
        adj = u @ u.T >= threshold
    else:
        scale = 1.0 if metric == "l2" else np.sqrt(16)
        adj = cdist(a, a) / scale <= threshold
    res = near_duplicates(x, threshold, metric=metric)
    labels = _components(adj)
    same = labels[:, None] == labels[None, :]
    assert np.array_equal((res.representative[:, None] == res.representative[None, :]).numpy(), same)
    assert np.array_equal(res.group_size.numpy(), same.sum(1))
    assert np.array_equal(res.neighbours.numpy(), adj.sum(1) - 1)
    assert res.metric == metric and res.threshold == threshold


def test_result_round_trips(tmp_path):
    res = near_duplicates(_set(), 0.0)
    assert res.groups == exact_duplicates(_set()).groups  # threshold 0 = exact duplicates
    res.save(tmp_path, "dups")
    back = DuplicateGroups.load(tmp_path, "dups")
    assert torch.equal(back.group_size, res.group_size) and back.metric == "l2"


@pytest.mark.parametrize("call, match", [
    (lambda x: near_duplicates(x, 1.0, metric="ssim"), "metric"),
    (lambda x: near_duplicates(x, -1.0), ">= 0"),
    (lambda x: near_duplicates(x, 1.5, metric="cosine"), r"\[-1, 1\]"),
    (lambda x: exact_duplicates(x[:0]), "non-empty"),
    (lambda x: exact_duplicates(x.index_fill(0, torch.tensor([0]), float("nan"))), "NaN"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(_set())
