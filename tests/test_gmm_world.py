"""The gmm world (Ye et al. 2025, §6.1): means, nested seeded draws, exact log-density."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from diffmem.worlds.gmm import BLOCK, GMMWorld, gmm_2d, gmm_world


def test_means_follow_the_paper_prior():
    world = gmm_world(512, seed=3)
    assert world.means.shape == (8, 512) and world.var == 1.0 and world.means.dtype == torch.float64
    # 4096 draws of N(0, 4): sample variance within ~4.5 standard errors (SE = 4 sqrt(2/4096) = 0.088)
    assert abs(float(world.means.var()) - 4.0) < 0.4
    assert torch.equal(gmm_world(512, seed=3).means, world.means)
    assert not torch.equal(gmm_world(512, seed=4).means, world.means)


def test_teaser_world_has_four_corners():
    world = gmm_2d()
    assert sorted(map(tuple, world.means.tolist())) == [(-3, -3), (-3, 3), (3, -3), (3, 3)]


def test_draws_are_nested_and_deterministic():
    world = gmm_world(4, seed=0)
    big, kb = world.sample(BLOCK + 300, seed=7)
    small, ks = world.sample(50, seed=7)
    assert torch.equal(big[:50], small) and torch.equal(kb[:50], ks)
    assert not torch.equal(world.sample(50, seed=8)[0], small)


def test_samples_have_the_mixture_moments():
    world = gmm_world(4, seed=0)
    x, k = world.sample(16000, seed=1)
    freq = torch.bincount(k, minlength=8).double() / len(k)
    assert float((freq - 1 / 8).abs().max()) < 0.02  # SE of each frequency = 0.0026
    resid = x - world.means[k]
    cov = resid.T @ resid / len(x)
    assert torch.allclose(cov, torch.eye(4, dtype=torch.float64), atol=0.06)


def test_log_prob_matches_an_independent_reference():
    world = gmm_world(3, seed=2, var=0.7)
    x, _ = world.sample(20, seed=0)
    comps = [MultivariateNormal(m, 0.7 * torch.eye(3, dtype=torch.float64)) for m in world.means]
    ref = torch.logsumexp(torch.stack([c.log_prob(x) for c in comps]), 0) - math.log(8)
    torch.testing.assert_close(world.log_prob(x), ref, rtol=0, atol=1e-12)


def test_teaser_density_integrates_to_one():
    world = gmm_2d()
    h = 0.05
    g = torch.arange(-10, 10, h, dtype=torch.float64) + h / 2
    pts = torch.cartesian_prod(g, g)
    assert abs(float(world.log_prob(pts).exp().sum()) * h * h - 1) < 1e-6


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="-1"):
        gmm_world(-1)
    with pytest.raises(ValueError, match="0"):
        gmm_world(4).sample(0)
    with pytest.raises(ValueError, match="variance"):
        GMMWorld(torch.zeros(2, 2), var=0.0)
