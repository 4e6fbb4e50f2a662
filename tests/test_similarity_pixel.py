"""Pixel similarities against numpy/scipy/sklearn references on fixed inputs."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from diffmem.similarity.pixel import (
    PAIRWISE,
    cosine,
    l2,
    normalized_l2,
    pairwise_cosine,
    pairwise_l2,
    pairwise_normalized_l2,
    pairwise_tiled_l2,
    tiled_l2,
)


def _images(n, seed, shape=(3, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g, dtype=torch.float64) * 2 - 1


def test_l2_normalized_l2_and_cosine_match_references():
    from sklearn.metrics.pairwise import cosine_similarity

    x, y = _images(5, 0), _images(7, 1)
    a, b = x.reshape(5, -1).numpy(), y.reshape(7, -1).numpy()
    np.testing.assert_allclose(pairwise_l2(x, y).numpy(), cdist(a, b), rtol=1e-12)
    np.testing.assert_allclose(pairwise_normalized_l2(x, y).numpy(), cdist(a, b) / np.sqrt(a.shape[1]), rtol=1e-12)
    np.testing.assert_allclose(pairwise_cosine(x, y).numpy(), cosine_similarity(a, b), rtol=1e-12)
    np.testing.assert_allclose(l2(x, y[:5]).numpy(), np.linalg.norm(a - b[:5], axis=1), rtol=1e-12)
    np.testing.assert_allclose(normalized_l2(x, y[:5]).numpy(), np.diag(cdist(a, b[:5])) / np.sqrt(a.shape[1]))
    np.testing.assert_allclose(cosine(x, y[:5]).numpy(), np.diag(cosine_similarity(a, b[:5])), rtol=1e-12)


def test_copies_are_at_distance_exactly_zero():
    x = _images(3, 2).float() * 50 + 100  # large values: the dot-product expansion would not cancel exactly
    assert pairwise_l2(x, x).diagonal().tolist() == [0.0, 0.0, 0.0]
    assert pairwise_tiled_l2(x, x).diagonal().tolist() == [0.0, 0.0, 0.0]


def _tiled_reference(x, y, grid):
    """Carlini et al.'s tiled L2 by explicit loops over numpy.array_split tiles."""
    out = np.zeros((len(x), len(y)))
    for i, a in enumerate(x.numpy()):
        for j, b in enumerate(y.numpy()):
            worst = 0.0
            for rows_a, rows_b in zip(np.array_split(a, grid, axis=1), np.array_split(b, grid, axis=1), strict=True):
                for ta, tb in zip(np.array_split(rows_a, grid, axis=2), np.array_split(rows_b, grid, axis=2),
                                  strict=True):
                    worst = max(worst, np.linalg.norm(ta - tb) / np.sqrt(ta.size))
            out[i, j] = worst
    return out


@pytest.mark.parametrize("shape, grid", [((3, 16, 16), 4), ((1, 10, 11), 3), ((2, 8, 8), 1)])
def test_tiled_l2_matches_loop_reference(shape, grid):
    x, y = _images(3, 3, shape), _images(4, 4, shape)
    np.testing.assert_allclose(pairwise_tiled_l2(x, y, grid=grid).numpy(), _tiled_reference(x, y, grid), rtol=1e-12)
    np.testing.assert_allclose(tiled_l2(x, y[:3], grid=grid).numpy(), _tiled_reference(x, y[:3], grid).diagonal())


def test_tiled_l2_ignores_a_shared_background_that_fools_global_l2():
    """Same background, different 4x4 object in one tile: global normalized L2 is small, tiled L2 is not."""
    background = _images(1, 5, (1, 16, 16))
    a, b = background.clone(), background.clone()
    a[..., :4, :4], b[..., :4, :4] = 1.0, -1.0
    assert normalized_l2(a, b).item() == pytest.approx(2 * 4 / 16)  # 16 of 256 pixels differ by 2
    assert tiled_l2(a, b).item() == pytest.approx(2.0)  # that tile differs everywhere


def test_registry_names_functions():
    assert set(PAIRWISE) == {"l2", "normalized_l2", "cosine", "tiled_l2"}


@pytest.mark.parametrize("call, match", [
    (lambda x: pairwise_l2(x, x[:, :2]), "channels differ"),
    (lambda x: pairwise_l2(x, x[..., :8]), "sizes or channels differ"),
    (lambda x: pairwise_l2(x, x[:0]), "non-empty"),
    (lambda x: l2(x, x[:2]), "equal batch sizes"),
    (lambda x: pairwise_cosine(x.index_fill(0, torch.tensor([0]), float("nan")), x), "NaN"),
    (lambda x: pairwise_tiled_l2(x, x, grid=0), "grid"),
    (lambda x: pairwise_tiled_l2(x, x, grid=13), "grid=13"),
    (lambda x: pairwise_tiled_l2(x.flatten(1), x.flatten(1)), "4 dims"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(_images(3, 6))
