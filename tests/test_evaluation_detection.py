"""Detection metrics against scikit-learn, scipy and brute-force definitions."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from diffmem.evaluation.detection import (
    auc_ci,
    calibrate_threshold,
    delong_test,
    detection_rate,
    roc_auc,
    tpr_at_fpr,
    tpr_at_fpr_closest,
)


def _data(seed, n_pos=60, n_neg=240, shift=1.0, ties=False):
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)])
    if ties:
        s = np.round(s, 1)
    return s, np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn_with_and_without_ties(ties):
    for seed in range(5):
        s, y = _data(seed, ties=ties)
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def _tpr_brute(s, y, alpha):
    best = 0.0
    for tau in np.r_[np.unique(s), np.inf]:
        flagged = s >= tau
        if flagged[y == 0].mean() <= alpha:
            best = max(best, flagged[y == 1].mean())
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.05, 0.1])
def test_conservative_tpr_equals_brute_force_over_thresholds(alpha):
    for seed in range(5):
        s, y = _data(seed, ties=seed % 2 == 0)
        assert tpr_at_fpr(s, y, alpha) == pytest.approx(_tpr_brute(s, y, alpha), abs=1e-12)


def test_closest_rule_may_exceed_the_fpr_and_is_never_below_the_conservative_one_here():
    s, y = np.r_[3.0, 2.0, 2.5, 1.0, 0.0], np.r_[1, 1, 0, 0, 0]  # one negative above a positive: FPR steps of 1/3
    assert tpr_at_fpr(s, y, 0.2) == 0.5  # FPR ≤ 0.2 only at 0
    assert tpr_at_fpr_closest(s, y, 0.2) == 1.0  # closest point FPR 1/3 > 0.2
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert tpr_at_fpr_closest(s, y, 0.2) == tpr[np.abs(fpr - 0.2) == np.abs(fpr - 0.2).min()].max()


def test_bootstrap_ci_brackets_the_auc_and_is_seeded():
    s, y = _data(0)
    lo, hi = auc_ci(s, y, n_resamples=500, seed=3)
    assert lo < roc_auc(s, y) < hi and hi - lo < 0.2
    assert auc_ci(s, y, n_resamples=500, seed=3) == (lo, hi)


def _delong_brute(a, b, y):
    """DeLong's structural components by their definition (O(n1 n0))."""
    def psi(x, z):
        return (x > z) + 0.5 * (x == z)

    out = []
    for s in (a, b):
        P, N = s[y == 1], s[y == 0]
        k = psi(P[:, None], N[None, :])
        out.append((k.mean(1), k.mean(0), k.mean()))
    s10 = np.cov(np.stack([o[0] for o in out]))
    s01 = np.cov(np.stack([o[1] for o in out]))
    cov = s10 / (y == 1).sum() + s01 / (y == 0).sum()
    return out[0][2] - out[1][2], np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_matches_its_definition_and_scipy_normal_tail():
    from scipy import stats

    s, y = _data(1, ties=True)
    other = s + np.random.default_rng(9).normal(0, 1.0, s.shape)
    r = delong_test(s, other, y)
    diff, se = _delong_brute(s, other, y)
    assert r.diff == pytest.approx(diff, abs=1e-12) and r.se == pytest.approx(se, rel=1e-10)
    assert r.auc_a == pytest.approx(roc_auc_score(y, s)) and r.auc_b == pytest.approx(roc_auc_score(y, other))
    assert r.p_value == pytest.approx(2 * stats.norm.sf(abs(diff / se)), rel=1e-10)
    assert delong_test(s, s, y).p_value == 1.0  # a detector against itself


def test_calibrated_threshold_respects_the_fpr_on_its_negatives():
    rng = np.random.default_rng(0)
    for n in (50, 100, 500, 999):
        neg = rng.normal(size=n)
        for alpha in (0.0, 0.01, 0.05):
            th = calibrate_threshold(neg, alpha)
            assert th.fpr_calibration <= alpha + 1e-12 and th.n_negatives == n
            assert (neg > th.value).sum() == int(np.floor(alpha * n + 1e-9))  # uses every allowed false positive
    assert calibrate_threshold([1.0, 2.0, 3.0], 0.01).value == 3.0  # < 100 negatives: none may be flagged


def test_detection_rate_per_group():
    th = calibrate_threshold([0.0, 0.1, 0.2], 0.0)
    rates = detection_rate([0.1, 0.5, 0.9, 0.3], th, [1, 1, 8, 8])
    assert rates == {1: (0.5, 2), 8: (1.0, 2)}


@pytest.mark.parametrize("bad", [([0.1, float("nan")], [0, 1]), ([0.1, 0.2], [1, 1]), ([0.1, 0.2], [0, 2]),
                                 ([0.1], [0, 1])])
def test_bad_inputs_name_the_problem(bad):
    with pytest.raises(ValueError):
        roc_auc(*bad)
