"""Analytic oracles for the loop: identities of Kim et al. (2025) and exact-score sampling."""

import functools

import pytest
import torch

from diffmem import Cond, Recorder, SeededNoise, VPSDESchedule, cfg, continuous_grid, discrete_grid, sample
from diffmem.sampling.solvers import ddim_step, ddpm_step, euler_step
from diffmem.schedules import eps_from_x0, x0_from_eps
from diffmem.theory.closed_form import GaussianDenoiser, GaussianMixtureDenoiser
from diffmem.types import Prediction
from helpers import PointMass, ToyMemorizer


def decompose(z, x, x_T):
    """Least squares z ≈ w0 x + wT x_T per row of z [S, d] (Kim et al. 2025, A4)."""
    A = torch.stack([x, x_T], 1)
    return torch.linalg.lstsq(A, z.T).solution  # [2, S]


def test_loss_identity():
    # eps - eps_hat = sqrt(ab / (1 - ab)) (x0_hat - x) on forward-noised inputs (Tweedie)
    x, eps, eps_hat = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    for ab in (0.005776, 0.275, 0.998):
        x_t = ab**0.5 * x + (1 - ab) ** 0.5 * eps
        lhs = eps - eps_hat
        rhs = (ab / (1 - ab)) ** 0.5 * (x0_from_eps(x_t, eps_hat, ab) - x)
        assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_cfg_commutes_with_x0_hat():
    x_t, eps_u, eps_c = torch.randn(3, 2, 16, dtype=torch.float64)
    ab, w = 0.3, 7.5
    lhs = x0_from_eps(x_t, cfg(eps_u, eps_c, w), ab)
    x0_u, x0_c = x0_from_eps(x_t, eps_u, ab), x0_from_eps(x_t, eps_c, ab)
    assert torch.allclose(lhs, x0_u + w * (x0_c - x0_u), atol=1e-10)
    # guidance gap: eps_c - eps_u = -sqrt(ab/(1-ab)) (x0_c - x0_u)
    assert torch.allclose(eps_c - eps_u, -(ab / (1 - ab)) ** 0.5 * (x0_c - x0_u), atol=1e-10)


def test_ddim_point_mass_reproduces_forward_marginal(sd_schedule, sd_grid):
    # Consistent start z_0 = sqrt(ab_981) x + sqrt(1 - ab_981) x_T (Kim et al., 2025): every later latent
    # decomposes onto (x, x_T) as (sqrt(ab), sqrt(1 - ab)) of the timestep it lives at, with zero residual.
    x, x_T = torch.randn(2, 256, dtype=torch.float64)
    ab0 = float(sd_grid.alpha_bar[0])
    z0 = ab0**0.5 * x + (1 - ab0) ** 0.5 * x_T
    tr = sample(PointMass(x[None], sd_schedule), z0[None], sd_grid, Cond(torch.zeros(1)), guidance=1.0)
    z = torch.cat([tr.x_t[1:, 0], tr.x_0])  # latents after each step, paired with alpha_bar_next
    w = decompose(z, x, x_T)
    assert torch.allclose(w[0], sd_grid.alpha_bar_next.sqrt(), atol=1e-5)
    assert torch.allclose(w[1], (1 - sd_grid.alpha_bar_next).sqrt(), atol=1e-5)
    resid = z - torch.outer(w[0], x) - torch.outer(w[1], x_T)
    assert float(resid.norm(dim=1).max()) < 1e-10


def test_point_mass_from_pure_noise_is_not_exact(sd_schedule, sd_grid):
    # Starting the same denoiser from pure x_T is not exact: w0 sits 0.0760 below after the first step.
    x, x_T = torch.randn(2, 256, dtype=torch.float64)
    tr = sample(PointMass(x[None], sd_schedule), x_T[None], sd_grid, Cond(torch.zeros(1)), guidance=1.0)
    w0 = decompose(tr.x_t[1:2, 0], x, x_T)[0, 0]
    assert float(w0 - sd_grid.alpha_bar_next[0].sqrt()) == pytest.approx(-0.0760, abs=5e-4)


@pytest.mark.parametrize("g,D1", [(1, -2.7433), (2, 22.3173), (4, 72.4387), (7.5, 160.1510), (10, 222.8026)])
def test_toy_cfg_memorizer_deviation(sd_schedule, sd_grid, g, D1):
    x, x_T = torch.randn(2, 64, dtype=torch.float64)
    tr = sample(ToyMemorizer(x[None], sd_schedule), x_T[None], sd_grid, Cond(torch.tensor([0]), torch.tensor([-1])),
                guidance=g)
    z = torch.cat([tr.x_t[1:, 0], tr.x_0])
    w0, wT = decompose(z, x, x_T)
    ab = sd_grid.alpha_bar_next
    assert float((w0 - ab.sqrt()).sum()) == pytest.approx(D1, abs=2e-4)
    assert float(-(wT - (1 - ab).sqrt()).sum()) == pytest.approx(-0.1044, abs=1e-4)
    assert float(w0[-1]) == pytest.approx(0.99735 * g, rel=1e-4)


def _random_gaussian(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), A @ A.T / d + 0.05 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("solver", ["ddim", "ddpm"])
def test_exact_gaussian_score_reproduces_mean_and_cov(solver):
    d, n = 3, 4000
    mean, cov = _random_gaussian(d)
    sched = VPSDESchedule()
    den = GaussianDenoiser(mean, cov, sched)
    # log-spaced steps: first-order solvers err most at small t, where the data's own scale is resolved
    grid = continuous_grid(sched, 200, t_max=12.0, t_min=1e-4, spacing="geometric")
    noise = SeededNoise(range(n), dtype=torch.float64)
    x_T = noise.randn((d,))
    tr = sample(den, x_T, grid, Cond(torch.zeros(n)), solver=solver, guidance=1.0, noise=noise,
                recorder=Recorder(keep=()))
    x0 = tr.x_0
    # mean: each coordinate within 4 standard errors; covariance: within sampling error of a Wishart
    se = (torch.diagonal(cov) / n).sqrt()
    assert bool(((x0.mean(0) - mean).abs() < 4 * se).all())
    emp = torch.cov(x0.T)
    tol = 4 * ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt() + 1e-3
    assert bool(((emp - cov).abs() < tol).all()), (emp, cov)


def test_empirical_denoiser_samples_are_training_points():
    train = torch.randn(20, 8, dtype=torch.float64)
    sched = VPSDESchedule()
    den = GaussianMixtureDenoiser(train, sched)
    x_T = SeededNoise(range(50), dtype=torch.float64).randn((8,))
    grid = continuous_grid(sched, 100, t_max=10.0, t_min=1e-6, spacing="geometric")
    tr = sample(den, x_T, grid, Cond(torch.full((50,), -1)), guidance=1.0, recorder=Recorder(keep=()))
    # the residual noise at t_min has std sqrt(1 - e^{-1e-6}) = 1e-3 per coordinate
    dist = torch.cdist(tr.x_0, train).min(1).values
    assert bool((dist < 0.02).all()), dist.max()
    # and the samples do not all collapse onto one training point
    assert len(set(torch.cdist(tr.x_0, train).argmin(1).tolist())) > 5


def _pred(x_t, eps, ab):
    return Prediction(eps, None, eps, x0_from_eps(x_t, eps, ab))


def test_euler_equals_ddim_eta0():
    x_t, eps = torch.randn(2, 4, 16, dtype=torch.float64)
    for ab, ab_next in [(0.005, 0.02), (0.3, 0.6), (0.9, 1.0)]:
        p = _pred(x_t, eps, ab)
        assert torch.allclose(euler_step(x_t, p, ab, ab_next), ddim_step(x_t, p, ab, ab_next), atol=1e-12)


def test_ddim_eta1_equals_ddpm_posterior():
    # DDIM with eta = 1 has the DDPM posterior mean and variance (Song et al. 2021, §4.1)
    x_t, eps, z = torch.randn(3, 4, 16, dtype=torch.float64)
    for ab, ab_next in [(0.005, 0.02), (0.3, 0.6)]:
        p = _pred(x_t, eps, ab)
        a = ddim_step(x_t, p, ab, ab_next, lambda: z, eta=1.0)
        b = ddpm_step(x_t, p, ab, ab_next, lambda: z)
        assert torch.allclose(a, b, atol=1e-12)


def test_ddim_eta_between_is_partial_noise():
    x_t, eps, z = torch.randn(3, 2, 8, dtype=torch.float64)
    p = _pred(x_t, eps, 0.3)
    step = functools.partial(ddim_step, eta=0.5)
    out = step(x_t, p, 0.3, 0.6, lambda: z)
    sigma = 0.5 * ((0.4 / 0.7) * (1 - 0.5)) ** 0.5
    expect = 0.6**0.5 * p.x0_hat + (0.4 - sigma**2) ** 0.5 * eps + sigma * z
    assert torch.allclose(out, expect, atol=1e-12)
    # the eps implied by a DDIM eta=0 landing is consistent with x0_hat
    nxt = ddim_step(x_t, p, 0.3, 0.6)
    assert torch.allclose(eps_from_x0(nxt, p.x0_hat, 0.6), eps, atol=1e-12)


def test_ddpm_last_step_adds_no_noise(sd_schedule):
    x_t, eps = torch.randn(2, 1, 8, dtype=torch.float64)
    p = _pred(x_t, eps, 0.99)
    assert torch.equal(ddpm_step(x_t, p, 0.99, 1.0, lambda: pytest.fail("drew noise")), p.x0_hat * 1.0)


def test_discrete_grid_exact_gaussian_ddim(sd_schedule):
    # the same statistical oracle on a discrete SD grid (trailing spacing reaches pure noise)
    d, n = 2, 3000
    mean, cov = _random_gaussian(d, seed=1)
    den = GaussianDenoiser(mean, cov, sd_schedule)
    grid = discrete_grid(sd_schedule, 100, spacing="trailing")
    ab0 = float(grid.alpha_bar[0])
    noise = SeededNoise(range(n), dtype=torch.float64)
    # start from the exact marginal at t_0 (not pure noise: ab_999 = 0.0047 is not 0)
    x_T = ab0**0.5 * (mean + noise.randn((d,)) @ torch.linalg.cholesky(cov).T) + (1 - ab0) ** 0.5 * noise.randn((d,))
    tr = sample(den, x_T, grid, Cond(torch.zeros(n)), guidance=1.0, recorder=Recorder(keep=()))
    se = (torch.diagonal(cov) / n).sqrt()
    assert bool(((tr.x_0.mean(0) - mean).abs() < 4 * se).all())
    assert torch.allclose(torch.cov(tr.x_0.T), cov, atol=0.1)
