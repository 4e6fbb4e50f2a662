"""Memorization of the exact scores through the one loop, and the collapse time (Ye et al. 2025, §3)."""

import math

import pytest
import torch

from diffmem.mixtures import gmm_world
from diffmem.schedules import VPSDESchedule
from diffmem.similarity.criteria import memorization_ratio
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from diffmem.theory.sampler import SamplerConfig, draw_samples
from diffmem.theory.score_memorization import collapse_curve, collapse_time, score_memorization


def test_empirical_score_copies_and_true_score_does_not():
    world = gmm_world(16, seed=0)
    X, _ = world.sample(100, seed=1)
    res = score_memorization(world, X, n_samples=100, sampler=SamplerConfig(steps=50))
    assert res["empirical"]["memorization_ratio"] >= 0.99
    assert res["true"]["memorization_ratio"] <= 0.01
    # each empirical sample is a training point (final x0_hat of the exact empirical denoiser)
    assert float(torch.cdist(res["empirical"]["samples"], X).min(1).values.max()) < 1e-6


def test_true_score_sampler_reproduces_the_mixture():
    # independent check of the sampler: mean log-likelihood close to that of fresh data (sampler bias < 2 %)
    world = gmm_world(8, seed=0)
    den = GaussianMixtureDenoiser(world.means, VPSDESchedule(), var=1.0)
    x, _ = draw_samples(den, 8, range(400), SamplerConfig(steps=100))
    fresh, _ = world.sample(4000, seed=9)
    ll, ref = float(world.log_prob(x).mean()), float(world.log_prob(fresh).mean())
    assert abs(ll - ref) < 0.02 * abs(ref) + 0.3
    assert memorization_ratio(x, world.sample(200, seed=1)[0]) <= 0.02


def test_samples_do_not_depend_on_batching():
    world = gmm_world(4, seed=0)
    den = GaussianMixtureDenoiser(world.sample(30, seed=1)[0], VPSDESchedule())
    cfg = SamplerConfig(steps=20)
    a, _ = draw_samples(den, 4, range(9), cfg)
    b, _ = draw_samples(den, 4, range(9), cfg, batch_size=4)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_collapse_time_falls_with_n_and_rises_with_d():
    ts = torch.logspace(-3, 1, 17).tolist()

    def t_star(d, n):
        X, _ = gmm_world(d, seed=0).sample(n, seed=1)
        return collapse_time(ts, collapse_curve(X, ts, draws=150))

    assert t_star(8, 1000) < t_star(8, 30)
    assert t_star(32, 300) > t_star(8, 300)


def test_collapse_time_interpolates_in_log_t():
    ts = [0.01, 0.1, 1.0, 10.0]
    curve = torch.tensor([1.0, 0.9, 0.1, 0.0], dtype=torch.float64)
    assert math.isclose(collapse_time(ts, curve), 10**-0.5, rel_tol=1e-12)
    assert collapse_time(ts, torch.tensor([0.4, 0.3, 0.2, 0.1])) is None
    assert collapse_time(ts, torch.ones(4)) == 10.0
    with pytest.raises(ValueError, match="increasing"):
        collapse_time([1.0, 0.1], torch.ones(2))
