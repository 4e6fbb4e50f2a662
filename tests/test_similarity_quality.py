"""FID, precision/recall, density/coverage against closed forms and independent numpy implementations."""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from diffmem.evaluation.density_coverage import density_coverage
from diffmem.evaluation.fid import fid, frechet_distance, gaussian_stats
from diffmem.evaluation.precision_recall import knn_radii, precision_recall
from diffmem.evaluation.quality import QualityResult, evaluate_quality, quality_from_features


def _random_spd(d, seed):
    g = np.random.default_rng(seed)
    a = g.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_and_scipy_sqrtm():
    # commuting (diagonal) covariances: ||mu_a - mu_b||^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(torch.tensor(mu_a), torch.diag(torch.tensor(a)),
                           torch.tensor(mu_b), torch.diag(torch.tensor(b)))
    assert got == pytest.approx(expected, rel=1e-12)
    # general covariances: the textbook formula with scipy.linalg.sqrtm
    s1, s2 = _random_spd(6, 0), _random_spd(6, 1)
    m1, m2 = np.arange(6.0), np.ones(6)
    ref = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(torch.tensor(m1), torch.tensor(s1), torch.tensor(m2), torch.tensor(s2))
    assert got == pytest.approx(ref, rel=1e-9)


def test_fid_of_identical_sets_is_zero_and_of_gaussians_approaches_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)
    # N(0, I) vs N(m, 4I) in d = 4: ||m||^2 + d (2 - 1)^2 = 1 + 4 = 5; sampling bias ~ d^2 / n
    a = torch.randn(40000, 4, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(40000, 4, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, 0.0, 0.0],
                                                                                   dtype=torch.float64)
    assert fid(a, b) == pytest.approx(5.0, abs=0.1)
    mu, sigma = gaussian_stats(a)
    np.testing.assert_allclose(sigma.numpy(), np.cov(a.numpy().T), rtol=1e-10)


def _pr_reference(real, fake, k):
    """Kynkäänniemi et al. 2019 by the definition, with full distance matrices."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real = np.sort(rr, axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(ff, axis=1)[:, k]
    precision = np.mean((rf <= r_real[:, None]).any(axis=0))
    recall = np.mean((rf.T <= r_fake[:, None]).any(axis=0))
    return precision, recall


def _dc_reference(real, fake, k):
    """Naeem et al. 2020 by the definition."""
    r_real = np.sort(cdist(real, real), axis=1)[:, k]
    inside = cdist(real, fake) <= r_real[:, None]  # [N, M]
    return inside.sum() / (k * fake.shape[0]), np.mean(inside.any(axis=1))


@pytest.mark.parametrize("shift", [0.0, 0.7, 3.0])
def test_precision_recall_and_density_coverage_match_definitions(shift):
    g = np.random.default_rng(1)
    real = g.normal(size=(120, 5))
    fake = 1.3 * g.normal(size=(90, 5)) + shift
    p, r = precision_recall(torch.tensor(real), torch.tensor(fake), k=3)
    assert (p, r) == pytest.approx(_pr_reference(real, fake, 3), abs=1e-12)
    d, c = density_coverage(torch.tensor(real), torch.tensor(fake), k=5)
    assert (d, c) == pytest.approx(_dc_reference(real, fake, 5), abs=1e-12)


def test_identical_and_disjoint_sets():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(2))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x)[1] == 1.0
    assert precision_recall(x, x + 100) == (0.0, 0.0)
    assert density_coverage(x, x + 100) == (0.0, 0.0)


def test_knn_radii_exclude_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]


class _Flatten:
    """A minimal FeatureExtractor: flattened pixels."""

    def features(self, images):
        return images.flatten(1).float()

    def describe(self):
        return {"kind": "flatten", "sha256": None, "preprocess": {"name": "none"}}


def test_evaluate_quality_records_provenance_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(3)
    real, fake = torch.rand(40, 1, 4, 4, generator=g), torch.rand(30, 1, 4, 4, generator=g)
    res = evaluate_quality(real, fake, _Flatten())
    direct = quality_from_features(real.flatten(1), fake.flatten(1))
    assert (res.fid, res.precision, res.recall, res.density, res.coverage) == pytest.approx(
        (direct.fid, direct.precision, direct.recall, direct.density, direct.coverage))
    prov = res.provenance
    assert prov.metric == "quality" and prov.model["kind"] == "flatten" and prov.preprocessing == {"name": "none"}
    assert prov.params["k_precision_recall"] == 3 and prov.params["k_density_coverage"] == 5
    res.save(tmp_path, "quality")
    back = QualityResult.load(tmp_path, "quality")
    assert back.fid == res.fid and torch.equal(back.real_features, res.real_features)
    assert back.provenance.model == prov.model


@pytest.mark.parametrize("call, match", [
    (lambda x: fid(x, x[:, :2]), "feature sizes differ"),
    (lambda x: fid(x[:1], x), r"N >= 2"),
    (lambda x: fid(x.index_fill(0, torch.tensor([0]), float("nan")), x), "NaN"),
    (lambda x: precision_recall(x[:3], x), r"N > k=3"),
    (lambda x: precision_recall(x, x[:, :2]), "features per item"),
    (lambda x: density_coverage(x, x, k=0), "positive int"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(20, 4))
