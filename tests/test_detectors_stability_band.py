"""The latent-update stability band: online update norms, quantiles against numpy, the score by hand, refusals."""

import numpy as np
import pytest
import torch

from detector_oracles import oracle_subjects
from diffmem.detectors import make_detector
from diffmem.detectors.stability_band import band_excess
from diffmem.sampling.trajectory import Recorder

EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def oracle():
    return oracle_subjects()


def test_update_norms_match_the_recorded_trajectory(oracle):
    empirical, _, _ = oracle
    prompts, seeds = empirical.prompts[:3], [0, 1]
    u = make_detector("chen-stability-band").update_norms(empirical, prompts, seeds)  # [P, n, K]
    traj = empirical.sample(empirical.cond([p for p in prompts for _ in seeds]), seeds * 3,
                            recorder=Recorder(keep=("x_t",)))
    states = torch.cat([traj.x_t, traj.x_0[None]])  # x_0 … x_N
    want = (states[1:] - states[:-1]).flatten(2).norm(dim=2).T.reshape(3, 2, -1)
    assert u.shape == (3, 2, empirical.steps) and torch.equal(u, want)


def test_band_is_numpy_quantiles_and_the_score_is_the_normalized_excess(oracle):
    empirical, _, planted = oracle
    negatives = [p for p in empirical.prompts if p.kind == "nonplanted"][:6]
    det = make_detector("chen-stability-band", quantiles=(0.1, 0.9))
    fitted = det.fit(empirical, negatives, [100, 101])
    u = det.update_norms(empirical, negatives, [100, 101]).flatten(0, 1).numpy()
    assert np.array_equal(np.array(fitted.lo_), np.quantile(u, 0.1, axis=0))
    assert np.array_equal(np.array(fitted.hi_), np.quantile(u, 0.9, axis=0))
    assert fitted.n_calibration_ == 12 and det.lo_ is None  # fit returns a new detector
    prompts = empirical.prompts[:4]
    u_eval = det.update_norms(empirical, prompts, [0, 1]).numpy()
    lo, hi = np.array(fitted.lo_), np.array(fitted.hi_)
    want = ((u_eval - hi) / (hi - lo)).max(-1).mean(1)
    got = fitted.score(empirical, prompts, [0, 1])
    assert np.abs(got - want).max() <= 16 * EPS * np.abs(want).max()
    two = make_detector("chen-stability-band", quantiles=(0.1, 0.9), two_sided=True).fit(empirical, negatives,
                                                                                         [100, 101])
    want2 = np.maximum((u_eval - hi) / (hi - lo), (lo - u_eval) / (hi - lo)).max(-1).mean(1)
    assert np.abs(two.score(empirical, prompts, [0, 1]) - want2).max() <= 16 * EPS * np.abs(want2).max()


def test_band_excess_by_hand():
    u = torch.tensor([[1.0, 3.0], [5.0, 2.0]], dtype=torch.float64)  # [K = 2 updates, B = 2 runs]
    lo, hi = torch.tensor([0.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 4.0], dtype=torch.float64)
    assert band_excess(u, lo, hi).tolist() == [0.5, 0.5]  # run 0: max(-0.5, 0.5); run 1: max(0.5, -1)
    assert band_excess(u, lo, hi, two_sided=True).tolist() == [0.5, 0.5]


def test_unfitted_mismatched_and_degenerate_bands_are_refused(oracle):
    empirical, _, _ = oracle
    det = make_detector("chen-stability-band")
    with pytest.raises(ValueError, match="is not fitted: call .fit"):
        det.score(empirical, empirical.prompts[:2], [0])
    fitted = det.fit(empirical, empirical.prompts[1:8:2], [100, 101])
    with pytest.raises(ValueError, match="fitted on 20 updates, but this run has 10"):
        fitted.score(empirical.with_steps(10), empirical.prompts[:2], [0])
    with pytest.raises(ValueError, match="at least 2 calibration runs"):
        det.fit(empirical, empirical.prompts[1:2], [100])
    with pytest.raises(ValueError, match="quantiles"):
        make_detector("chen-stability-band", quantiles=(0.9, 0.1))


def test_batching_does_not_change_scores(oracle):
    empirical, _, _ = oracle
    fitted = make_detector("chen-stability-band", batch_size=3).fit(empirical, empirical.prompts[1:12:2], [100, 101])
    a = fitted.score(empirical, empirical.prompts[:5], [0, 1, 2])
    b = make_detector("chen-stability-band", batch_size=64).fit(empirical, empirical.prompts[1:12:2],
                                                                [100, 101]).score(empirical, empirical.prompts[:5],
                                                                                  [0, 1, 2])
    assert np.abs(a - b).max() <= 1e6 * EPS * np.abs(b).max()
