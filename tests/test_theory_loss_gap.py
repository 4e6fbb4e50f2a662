"""Loss gap of Ye et al. (2025): Prop. 4.1 within Monte Carlo error, the small-t closed form, its n-dependence
(Prop. 4.1 and Fig. 1, on smaller and faster settings than the reference table)."""

import json
import math

import pytest
import torch

from diffmem.mixtures import GaussianMixture, gmm_world
from diffmem.theory.lab import run_loss_gap
from diffmem.theory.loss_gap import loss_gap, loss_gap_closed_form
from diffmem.theory.summaries import LossGapSummary


@pytest.fixture(scope="module")
def world16():
    return gmm_world(16, seed=0)


@pytest.mark.parametrize("t", [0.05, 0.5, 1.0, 2.0])
def test_prop_4_1_direct_loss_difference_equals_fisher_divergence(world16, t):
    X, _ = world16.sample(300, seed=1)
    e = loss_gap(X, world16.mixture, t, draws=800, seed=2)
    # (a) and (b) are estimated on the same draws: their paired difference has mean zero
    assert abs(e.gap - e.fisher) <= 3 * e.diff_se + 1e-9 * e.fisher
    assert e.fisher > 0 and e.gap_se > 0


def test_empirical_score_is_the_dsm_minimizer(world16):
    # E_{P̂_t}[-z/sigma - grad log p̂_t(X)] = 0, so any shift delta raises the DSM loss by |delta|^2 (oracle 3)
    X, _ = world16.sample(200, seed=1)
    ab = math.exp(-0.7)
    g = torch.Generator().manual_seed(0)
    i, z = torch.randint(200, (4000,), generator=g), torch.randn(4000, 16, generator=g, dtype=torch.float64)
    x = ab**0.5 * X[i] + (1 - ab) ** 0.5 * z
    resid = -z / (1 - ab) ** 0.5 - GaussianMixture.empirical(X).score(x, ab)
    se = resid.std(0) / 4000**0.5
    assert bool((resid.mean(0).abs() <= 4 * se).all())


@pytest.mark.parametrize("t", [0.01, 0.05, 0.3])
def test_closed_form_at_small_t(world16, t):
    X, _ = world16.sample(300, seed=1)
    e = loss_gap(X, world16.mixture, t, draws=2000, seed=2)
    assert abs(e.gap - e.closed_form) <= 4 * e.gap_se + 0.01 * e.closed_form
    assert math.isclose(e.closed_form, 16 * (1 / (1 - math.exp(-t)) - 1), rel_tol=1e-12)


def test_closed_form_reduces_to_the_isotropic_formula():
    ab, d, s2 = 0.8, 5, 0.3
    sigma, v = (1 - ab) ** 0.5, ab * s2 + 1 - ab
    iso = d * ((1 / sigma - sigma / v) ** 2 + ab * s2 / v**2)
    assert math.isclose(loss_gap_closed_form(ab, torch.full((d,), s2, dtype=torch.float64)), iso, rel_tol=1e-12)
    assert math.isclose(loss_gap_closed_form(ab, torch.ones(d)), d * (1 / (1 - ab) - 1), rel_tol=1e-12)


def test_more_data_shrinks_the_gap_only_at_large_t(world16):
    small, big = world16.sample(100, seed=1)[0], world16.sample(4000, seed=1)[0]
    g = {(n, t): loss_gap(X, world16.mixture, t, draws=600, seed=3).gap
         for n, X in ((100, small), (4000, big)) for t in (0.05, 2.0)}
    assert math.isclose(g[100, 0.05], g[4000, 0.05], rel_tol=0.03)
    assert g[4000, 2.0] < 0.5 * g[100, 2.0]


def test_loss_gap_run_writes_summary_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    s = run_loss_gap(tmp_path, dim=4, draws=100, ns=(50,), ts=(0.05, 0.3, 2.0), tables=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert {"gap_mc", "fisher_mc", "gap_closed_form", "max_rel_err_small_t", "provenance"} <= set(saved)
    assert LossGapSummary.from_dict(saved) == s  # summary.json holds the typed summary's keys
    assert len(s.gap_mc["50"]) == 3 and s.prop41_all_agree
    assert [r["t"] for r in s.reference] == [0.05, 0.3, 2.0]
    assert (tmp_path / "loss_gap.png").stat().st_size > 1000 and (tmp_path / "loss_gap.json").exists()


def test_bad_draws_named():
    with pytest.raises(ValueError, match="1"):
        loss_gap(torch.zeros(3, 2), GaussianMixture(torch.zeros(1, 2), cov=1.0), 0.1, draws=1)
