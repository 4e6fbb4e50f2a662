"""Early-Detection Metric 2 and DSM: the gradient in closed form and by finite differences, DSM by hand."""

import torch

from detector_oracles import oracle_subjects
from diffmem.detectors import make_detector
from diffmem.detectors.early_derivative import metric2_gradient
from diffmem.detectors.probes import initial_states, vp_sigma
from diffmem.schedules import x0_from_eps
from diffmem.types import Cond
from test_detectors_sharpness import two_gaussians

EPS64 = torch.finfo(torch.float64).eps


def energy(subject, x, t, cond):
    """½(‖ε_c‖² − ‖ε_u‖²) per sample."""
    pred = subject.denoiser(x, t, cond)
    return 0.5 * (pred.eps_c.square().flatten(1).sum(1) - pred.eps_u.square().flatten(1).sum(1))


def test_metric2_gradient_equals_the_closed_form_on_two_gaussians():
    """ε = −σ s, so J = ∂ε/∂x = −σ H: J_cᵀε_c − J_uᵀε_u = σ(A⁻¹ε_c + H_u ε_u), H_c = −A⁻¹, H_u from the mixture."""
    subject, mu, cov = two_gaussians()
    grid = subject.spec.grid
    x = initial_states(subject, [0, 1, 2])
    cond = Cond(torch.zeros(3, dtype=torch.long), torch.full((3,), -1))
    den = subject.denoiser
    for i in (0, 5):
        t, ab = grid.timesteps[i], float(grid.alpha_bar[i])
        sigma = vp_sigma(ab)
        pred = den(x, t, cond)
        A_inv = torch.linalg.inv(ab * cov + (1 - ab) * torch.eye(len(cov), dtype=torch.float64))
        H_u = den.mixture.hessian(x, ab)  # [B, d, d], exact (Ye et al. §2.6)
        ref = sigma * (pred.eps_c @ A_inv + torch.einsum("bij,bj->bi", H_u, pred.eps_u))
        ours = metric2_gradient(subject, x, t, cond)
        tol = 1e3 * EPS64 * sigma * float(torch.linalg.matrix_norm(A_inv, 2) * pred.eps_c.norm(dim=1).max())
        assert float((ours - ref).abs().max()) <= tol and float(ref.abs().max()) > 1e3 * tol


def test_metric2_gradient_equals_a_finite_difference_and_the_detector_squares_it():
    empirical, _, _ = oracle_subjects(k=4)
    prompts, seeds = empirical.prompts, [0, 1]
    cond = empirical.cond([p for p in prompts for _ in seeds])
    x = initial_states(empirical, seeds * len(prompts))
    t = empirical.spec.grid.timesteps[0]
    g = metric2_gradient(empirical, x, t, cond)
    u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def central(h):
        return (energy(empirical, x + h * u, t, cond) - energy(empirical, x - h * u, t, cond)) / (2 * h)

    h = 1e-3
    d_h, d_h2 = central(h), central(h / 2)
    # truncation error O(h²): Richardson bounds it by |D(h) − D(h/2)|; round-off by eps·|E|/h
    bound = 2 * (d_h - d_h2).abs() + 1e3 * EPS64 * energy(empirical, x, t, cond).abs().max() / h
    directional = (g * u).flatten(1).sum(1)
    assert bool(((directional - d_h2).abs() <= bound).all()) and float(directional.abs().min()) > 1e3 * float(
        bound.max())
    scores = make_detector("early-m2").score_generations(empirical, prompts, seeds)
    torch.testing.assert_close(scores.flatten(), g.flatten(1).square().sum(1), rtol=0, atol=0)


def test_dsm_equals_a_hand_computed_ddim_step():
    """x₁ = √ᾱ₁ x̂₀ + √(1 − ᾱ₁) ε̂ from the guided ε̂ at x_T (DDIM, η = 0), then ‖ε_c(x₁, t₁) − ε_c(x_T, t₀)‖²."""
    empirical, _, _ = oracle_subjects(k=4)
    prompts, seeds = empirical.prompts, [0, 3]
    cond = empirical.cond([p for p in prompts for _ in seeds])
    grid, den, w = empirical.spec.grid, empirical.denoiser, 7.5
    x = initial_states(empirical, seeds * len(prompts))
    eps_c, jumps = [], []
    for i in range(3):
        pred = den(x, grid.timesteps[i], cond)
        eps_c.append(pred.eps_c)
        eps_hat = pred.eps_u + w * (pred.eps_c - pred.eps_u)
        x0_hat = x0_from_eps(x, eps_hat, float(grid.alpha_bar[i]))
        ab_next = float(grid.alpha_bar_next[i])
        x = ab_next**0.5 * x0_hat + (1 - ab_next) ** 0.5 * eps_hat
    jumps = [(eps_c[i + 1] - eps_c[i]).flatten(1).square().sum(1).view(len(prompts), 2) for i in (0, 1)]
    for name, ref in (("early-dsm01", jumps[0]), ("early-dsm12", jumps[1])):
        ours = make_detector(name, guidance=w).score_generations(empirical, prompts, seeds)
        tol = 1e4 * EPS64 * float(sum(e.square().flatten(1).sum(1).max() for e in eps_c))  # ‖ε_c‖² scale
        assert float((ours - ref).abs().max()) <= tol and float(ref.min()) > 1e3 * tol
