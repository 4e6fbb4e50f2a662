"""Closed-form scores of Ye et al. (2025): empirical and true score, Hessians, Lipschitz bounds,
against autograd, torch.distributions and the paper's formulas."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from diffmem.mixtures import GaussianMixture, alpha_sigma, gmm_world
from diffmem.schedules import DiscreteSchedule, VPSDESchedule
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from diffmem.theory.lipschitz import gaussian_lipschitz, lipschitz_bounds, measured_lipschitz, probe_points
from diffmem.types import Cond

F64 = torch.float64


def _autograd_score(mix, x, ab):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(mix.log_prob(x, ab).sum(), x)[0]


def _autograd_hessian(mix, x, ab):
    return torch.autograd.functional.hessian(lambda z: mix.log_prob(z[None], ab).sum(), x)


def test_ou_alpha_sigma():
    t = torch.tensor([1e-3, 0.3, 5.0], dtype=F64)
    alpha, s2 = alpha_sigma(VPSDESchedule().alpha_bar(t))
    torch.testing.assert_close(alpha, torch.exp(-t / 2))
    torch.testing.assert_close(alpha**2 + s2, torch.ones(3, dtype=F64))


def test_empirical_score_is_grad_log_density_and_single_point_closed_form():
    X = torch.randn(30, 5, dtype=F64)
    emp = GaussianMixture.empirical(X)
    x = 0.8 * X[:4] + 0.5 * torch.randn(4, 5, dtype=F64)
    for ab in (0.99, 0.5, 0.05):
        torch.testing.assert_close(emp.score(x, ab), _autograd_score(emp, x, ab), rtol=1e-9, atol=1e-9)
    one = GaussianMixture.empirical(X[:1])
    ab = 0.7
    torch.testing.assert_close(one.score(x, ab), -(x - ab**0.5 * X[0]) / (1 - ab), rtol=1e-12, atol=1e-12)


def test_identity_covariance_true_score():
    world = gmm_world(6, seed=1)
    x = torch.randn(10, 6, dtype=F64) * 3
    ab = 0.4
    post = world.mixture.posterior(x, ab)
    torch.testing.assert_close(world.score(x, ab), ab**0.5 * post.comp_mean - x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(world.score(x, ab), _autograd_score(world.mixture, x, ab), rtol=1e-9, atol=1e-9)


def test_full_covariance_mixture_against_torch_distributions():
    d = 4
    A = torch.randn(d, d, dtype=F64)
    cov = A @ A.T / d + 0.2 * torch.eye(d, dtype=F64)
    means = torch.randn(3, d, dtype=F64) * 2
    w = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    mix = GaussianMixture(means, cov=cov, weights=w)
    x = torch.randn(7, d, dtype=F64)
    ab = 0.6
    comps = [MultivariateNormal(ab**0.5 * m, ab * cov + (1 - ab) * torch.eye(d, dtype=F64)) for m in means]
    ref = torch.logsumexp(torch.stack([c.log_prob(x) for c in comps]) + w.log()[:, None], 0)
    torch.testing.assert_close(mix.log_prob(x, ab), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(mix.score(x, ab), _autograd_score(mix, x, ab), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mix.hessian(x, ab)[2], _autograd_hessian(mix, x[2], ab), rtol=1e-8, atol=1e-8)


def test_empirical_hessian_by_posterior_covariance_matches_autograd():
    X = torch.randn(12, 3, dtype=F64)
    emp = GaussianMixture.empirical(X)
    x = 0.9 * X[:3] + 0.3 * torch.randn(3, 3, dtype=F64)
    H = emp.hessian(x, 0.8)
    for b in range(3):
        torch.testing.assert_close(H[b], _autograd_hessian(emp, x[b], 0.8), rtol=1e-8, atol=1e-8)


def test_two_point_midpoint_eigenvalue_and_upper_bound():
    # n = 2 at x = alpha (x1 + x2)/2 the top eigenvalue is -1/s2 + ab |x1 - x2|^2 / (4 s2^2)
    X = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, -1.0]], dtype=F64)
    ab = 0.7
    s2 = 1 - ab
    top = torch.linalg.eigvalsh(GaussianMixture.empirical(X).hessian(ab**0.5 * X.mean(0, keepdim=True), ab))[0, -1]
    assert math.isclose(float(top), -1 / s2 + ab * 6.0 / (4 * s2**2), rel_tol=1e-12)


@pytest.mark.parametrize("t", [0.01, 0.1, 1.0])
def test_lemma_c1_brackets_the_measured_lipschitz_constant(t):
    X = gmm_world(8, seed=0).sample(40, seed=1)[0]
    ab = math.exp(-t)
    lo, hi = lipschitz_bounds(X, ab)
    measured = measured_lipschitz(GaussianMixture.empirical(X), probe_points(X, ab, 200, torch.Generator()), ab)
    assert lo <= measured <= hi
    if t <= 0.1:  # the empirical score's constant grows like 1/sigma^4; a Gaussian's stays O(1)
        assert measured > 50 * gaussian_lipschitz(ab, torch.ones(8, dtype=F64))


def test_gaussian_truth_lipschitz_constant():
    cov = torch.diag(torch.tensor([0.25, 1.0, 4.0], dtype=F64))
    one = GaussianMixture(torch.zeros(1, 3, dtype=F64), cov=cov)
    for ab in (0.9, 0.3):
        H = one.hessian(torch.randn(5, 3, dtype=F64), ab)
        norm = torch.linalg.matrix_norm(H, ord=2).max()
        assert math.isclose(float(norm), gaussian_lipschitz(ab, torch.diagonal(cov)), rel_tol=1e-10)
    assert gaussian_lipschitz(0.5, torch.ones(3)) == 1.0


def test_chunking_is_exact_and_small_t_is_stable():
    X = torch.randn(1000, 8, dtype=F64) * 3
    emp = GaussianMixture.empirical(X)
    x = torch.exp(torch.tensor(-5e-7)).sqrt() * X[:6] + 1e-3 * torch.randn(6, 8, dtype=F64)
    ab_small = float(torch.exp(torch.tensor(-1e-6, dtype=F64)))
    for ab in (ab_small, 0.3):
        whole, parts = emp.posterior(x, ab, second=True), emp.posterior(x, ab, second=True, chunk_size=7)
        for a, b in zip((whole.mean, whole.comp_cov, whole.log_density), (parts.mean, parts.comp_cov,
                                                                          parts.log_density), strict=True):
            assert bool(torch.isfinite(a).all())
            # log p_t subtracts |x|^2 / (2 sigma^2) ~ 1e8 at t = 1e-6 from logits of that size: 1e-16 * 1e8
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    # at t = 1e-6 the posterior sits on the nearest training point
    assert torch.allclose(emp.x0_mean(x, ab_small), X[:6], atol=1e-6)


def test_hundred_thousand_points_fit_and_match_a_direct_log_sum_exp():
    X = torch.randn(100_000, 8, dtype=F64)
    emp = GaussianMixture.empirical(X)
    x, ab = torch.randn(16, 8, dtype=F64), 0.5
    d2 = torch.cdist(x, ab**0.5 * X) ** 2
    w = torch.softmax(-d2 / (2 * (1 - ab)), 1)
    torch.testing.assert_close(emp.score(x, ab), (ab**0.5 * w @ X - x) / (1 - ab), rtol=1e-9, atol=1e-9)


def test_denoiser_with_labels_and_discrete_schedule():
    sched = DiscreteSchedule.named("linear")
    means = torch.randn(6, 4, dtype=F64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    den = GaussianMixtureDenoiser(means, sched, var=0.5, labels=labels, chunk_size=2)
    x_t, c = torch.randn(3, 4, dtype=F64), torch.tensor([1, -1, 2])
    x0 = den(x_t, 400, Cond(c)).x0_hat
    ab = float(sched.alpha_bar(400))
    for b in range(3):  # independent reference: the sub-mixture of the allowed components
        keep = (labels == c[b]) | (c[b] == -1)
        ref = GaussianMixture(means[keep], cov=0.5).x0_mean(x_t[b:b + 1], ab)
        torch.testing.assert_close(x0[b:b + 1], ref, rtol=1e-10, atol=1e-10)


def test_bad_inputs_name_the_value():
    emp = GaussianMixture.empirical(torch.randn(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="1.5"):
        emp.score(torch.zeros(1, 2, dtype=F64), 1.5)
    with pytest.raises(ValueError, match="non-singular"):
        emp.log_prob(torch.zeros(1, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        emp.score(torch.zeros(1, 3, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="-0.5"):
        GaussianMixture(torch.zeros(2, 2), cov=-0.5)
