"""Memorization criteria: the 1/3 ratio rule with duplicate collapsing, relative distance, threshold labels."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from diffmem.similarity.criteria import (
    COPY_RATIO,
    is_copy,
    memorization_ratio,
    nn_ratio,
    relative_distance,
    threshold_labels,
    unique_refs,
)


def _world(seed=0, m=40, d=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64), g


def test_nn_ratio_matches_numpy_on_distinct_refs():
    refs, g = _world()
    q = torch.randn(25, 12, generator=g, dtype=torch.float64)
    ratio, nearest = nn_ratio(q, refs)
    d = np.sort(cdist(q.numpy(), refs.numpy()), axis=1)
    np.testing.assert_allclose(ratio.numpy(), d[:, 0] / d[:, 1], rtol=1e-12)
    assert np.array_equal(nearest.numpy(), cdist(q.numpy(), refs.numpy()).argmin(1))


def test_duplicated_training_image_does_not_hide_its_copies():
    """A near copy of an image duplicated 5x: the raw rule sees a2 = a1 (ratio 1, "not memorized"); the
    deduplicated rule compares with the nearest *different* image and flags the copy."""
    refs, g = _world(1)
    refs = torch.cat([refs, refs[3].expand(4, -1)])  # image 3 now appears 5 times (rows 3, 40..43)
    near_copy = refs[3] + 1e-3 * torch.randn(12, generator=g, dtype=torch.float64)
    ratio_raw, _ = nn_ratio(near_copy[None], refs, dedup=False)
    ratio, nearest = nn_ratio(near_copy[None], refs)
    assert ratio_raw.item() == pytest.approx(1.0, abs=1e-9)
    assert ratio.item() < 0.01 and nearest.item() == 3  # first occurrence in the original refs
    assert not is_copy(near_copy[None], refs, dedup=False).item() and is_copy(near_copy[None], refs).item()


def test_exact_copy_of_a_duplicate_is_a_copy_under_both_rules():
    refs, _ = _world(2)
    refs = torch.cat([refs, refs[:1]])
    assert nn_ratio(refs[:1], refs)[0].item() == 0.0
    assert nn_ratio(refs[:1], refs, dedup=False)[0].item() == 0.0  # 0/0 is defined as a copy


def test_threshold_is_inclusive_at_one_third():
    refs = torch.tensor([[0.0], [4.0]], dtype=torch.float64)
    q = torch.tensor([[1.0], [1.01]], dtype=torch.float64)  # ratios 1/3 exactly, then just above
    assert nn_ratio(q, refs)[0][0].item() == COPY_RATIO
    assert is_copy(q, refs).tolist() == [True, False]


def test_memorization_ratio_counts_copies():
    refs, g = _world(3, m=60)
    copies = refs[:12] + 1e-4 * torch.randn(12, 12, generator=g, dtype=torch.float64)
    fresh = torch.randn(28, 12, generator=g, dtype=torch.float64)
    q = torch.cat([copies, fresh])
    d = np.sort(cdist(q.numpy(), refs.numpy()), axis=1)
    expected = float(np.mean(d[:, 0] / d[:, 1] <= 1 / 3))
    assert memorization_ratio(q, refs) == pytest.approx(expected)
    assert memorization_ratio(q, refs) >= 12 / 40


def test_unique_refs_inverse_rebuilds_the_set():
    refs, _ = _world(4, m=10)
    refs = refs[torch.tensor([0, 1, 0, 2, 1, 3])]
    uniq, inverse = unique_refs(refs)
    assert len(uniq) == 4 and torch.equal(uniq[inverse], refs)


def test_relative_distance_matches_numpy():
    refs, g = _world(5, m=80)
    q = torch.randn(15, 12, generator=g, dtype=torch.float64)
    d = np.sort(cdist(q.numpy(), refs.numpy()), axis=1)[:, :10]
    r_sq, idx = relative_distance(q, refs, k=10)
    r_plain, _ = relative_distance(q, refs, k=10, squared=False)
    np.testing.assert_allclose(r_sq.numpy(), d[:, 0] ** 2 / (d**2).mean(1), rtol=1e-12)
    np.testing.assert_allclose(r_plain.numpy(), d[:, 0] / d.mean(1), rtol=1e-12)
    assert np.array_equal(idx.numpy(), cdist(q.numpy(), refs.numpy()).argmin(1))
    assert relative_distance(refs[:2], refs, k=10)[0].tolist() == [0.0, 0.0]


def test_threshold_labels_declare_the_direction():
    s = torch.tensor([0.2, 0.5, 0.9])
    assert threshold_labels(s, 0.5, higher_is_copy=True).tolist() == [False, False, True]
    assert threshold_labels(s, 0.5, higher_is_copy=True, inclusive=True).tolist() == [False, True, True]
    assert threshold_labels(s, 0.5, higher_is_copy=False).tolist() == [True, False, False]


@pytest.mark.parametrize("call, match", [
    (lambda r: nn_ratio(r[:1], r[:1].expand(3, -1)), "at least 2 distinct"),
    (lambda r: nn_ratio(r[:1], r[:0]), "non-empty"),
    (lambda r: is_copy(r[:1], r, threshold=1.5), "threshold"),
    (lambda r: relative_distance(r[:1], r, k=100), "at least 100"),
    (lambda r: nn_ratio(torch.full((1, 12), float("nan")), r), "NaN"),
    (lambda r: nn_ratio(r[:1, :5], r), "features per item"),
    (lambda r: threshold_labels(torch.tensor([float("nan")]), 0.5, higher_is_copy=True), "NaN"),
])
def test_bad_inputs(call, match):
    refs, _ = _world(6)
    with pytest.raises(ValueError, match=match):
        call(refs)
