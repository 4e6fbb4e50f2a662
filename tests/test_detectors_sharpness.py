"""Jeon et al.'s sharpness: the JVP equals (H_c − H_u) s^Δ in closed form; the VJP form equals it on exact scores."""

import dataclasses

import numpy as np
import torch

from detector_oracles import oracle_subjects
from diffmem.detectors import make_detector
from diffmem.detectors.probes import guided_states, initial_states, vp_sigma
from diffmem.detectors.sharpness import hessian_score_product
from diffmem.schedules import DiscreteSchedule
from diffmem.subject import closed_form_subject
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from diffmem.types import Cond

EPS64 = torch.finfo(torch.float64).eps


def two_gaussians(d=6, seed=0):
    """Class 0 and class 1 are one Gaussian each, N(μ_k, Σ) with one full Σ; the null branch is their ½–½ mixture."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(2, d, generator=g, dtype=torch.float64)
    L = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    cov = L @ L.T + 0.1 * torch.eye(d, dtype=torch.float64)
    den = GaussianMixtureDenoiser(mu, DiscreteSchedule.named("scaled_linear"), cov=cov, labels=torch.tensor([0, 1]))
    return closed_form_subject(den, mu, steps=10), mu, cov


def closed_form_product(x, mu, cov, alpha_bar):
    """(H_c − H_u) s^Δ for c = class 0, by hand: H_c = −A⁻¹, H_u = −A⁻¹ + ᾱ π₀π₁ A⁻¹δδᵀA⁻¹, s^Δ = √ᾱ π₁ A⁻¹δ,
    A = ᾱΣ + (1 − ᾱ)I, δ = μ₀ − μ₁, π the posterior weights of the two components; so the product is
    −ᾱ^{3/2} π₀ π₁² (δᵀA⁻²δ) A⁻¹δ."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    A_inv = torch.linalg.inv(ab * cov + (1 - ab) * torch.eye(len(cov), dtype=torch.float64))
    delta = mu[0] - mu[1]
    logit = (x - ab.sqrt() * (mu[0] + mu[1]) / 2) @ A_inv @ (ab.sqrt() * delta)  # log N₀ − log N₁
    pi0 = torch.sigmoid(logit)
    pi1 = 1 - pi0
    a_delta = A_inv @ delta
    return -(ab**1.5) * (pi0 * pi1**2 * (a_delta @ a_delta))[:, None] * a_delta


def test_jvp_equals_the_closed_form_hessian_score_product():
    subject, mu, cov = two_gaussians()
    grid, eye = subject.spec.grid, torch.eye(len(cov), dtype=torch.float64)
    r = initial_states(subject, [0, 1, 2, 3])
    cond = Cond(torch.zeros(4, dtype=torch.long), torch.full((4,), -1))
    tau = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=torch.float64)  # posterior log-odds of the two components
    for i in (0, 5, 9):  # high, medium and low noise
        t, ab = grid.timesteps[i], float(grid.alpha_bar[i])
        A_inv = torch.linalg.inv(ab * cov + (1 - ab) * eye)
        w = ab**0.5 * A_inv @ (mu[0] - mu[1])  # x ↦ log-odds is affine with this gradient
        x0 = ab**0.5 * (mu[0] + mu[1]) / 2 + r
        x = x0 + (tau - (x0 - ab**0.5 * (mu[0] + mu[1]) / 2) @ w)[:, None] * w / (w @ w)
        ours = hessian_score_product(subject, x, t, cond, ab)
        ref = closed_form_product(x, mu, cov, ab)
        # H_c v and H_u v are each ≈ ‖A⁻¹‖·‖v‖ before they cancel; float64 round-off of a few hundred operations
        pred = subject.denoiser(x, t, cond)
        s_delta = (pred.eps_c - pred.eps_u).norm(dim=1).max() / vp_sigma(ab)
        tol = 1e3 * EPS64 * float(torch.linalg.matrix_norm(A_inv, 2) * s_delta)
        assert float((ours - ref).abs().max()) <= tol
        assert float(ref.norm(dim=1).min()) > 1e3 * tol  # the check is not vacuous


def test_vjp_form_equals_jvp_form_on_exact_scores_and_k_averages_the_guided_states():
    empirical, _, _ = oracle_subjects(k=6)
    prompts, seeds = empirical.prompts, [0, 1]
    jvp = make_detector("jeon-sharpness", k=3).score_generations(empirical, prompts, seeds)
    vjp = make_detector("jeon-sharpness-vjp", k=3).score_generations(empirical, prompts, seeds)
    tol = 1e4 * EPS64 * float(jvp.abs().max())  # the Jacobian of an exact score is symmetric: Jv = Jᵀv up to round-off
    assert float((jvp - vjp).abs().max()) <= tol
    # k = 3 averages the statistic over x_T and the states after the first and second guided steps
    det = make_detector("jeon-sharpness")
    cond = empirical.cond([p for p in prompts for _ in seeds])
    states, ts, abars = guided_states(empirical, cond, seeds * len(prompts), 3)
    traj = empirical.sample(cond, seeds * len(prompts), guidance=7.5, first=2)
    assert torch.equal(states[:2], traj.x_t) and torch.equal(states[2], traj.x_0)
    by_hand = torch.stack([det.statistic(empirical, x, t, cond, ab) for x, t, ab in zip(states, ts, abars,
                                                                                         strict=True)]).mean(0)
    assert float((by_hand.view(len(prompts), 2) - jvp).abs().max()) <= tol


def test_on_the_exact_memorizer_sharpness_follows_the_unconditional_covariance_not_the_planting():
    """Documented failure (not a bug): at x_T, H_c − H_u = (ᾱ/σ⁴)(Cov_c − Cov_u) and Cov_c = 0 for a one-image
    class, so the statistic measures how well the unconditional covariance amplifies s^Δ. A 32-image class mean is
    one of the directions that dominate Cov_u, a one-image class is not: the curvature gain ‖H^Δ s^Δ‖/‖s^Δ‖ is larger
    for the non-planted classes, and the AUC falls below 0.5 although ‖s^Δ‖ alone (Wen) separates perfectly."""
    from diffmem.evaluation.detection import roc_auc

    empirical, _, planted = oracle_subjects()
    seeds = [0, 1]
    sharp = make_detector("jeon-sharpness").score_generations(empirical, empirical.prompts, seeds).mean(1)
    wen = make_detector("wen-step1").score_generations(empirical, empirical.prompts, seeds).mean(1)
    gain = (sharp / wen).numpy()
    assert roc_auc(wen.numpy(), planted) == 1.0
    assert roc_auc(sharp.numpy(), planted) < 0.5 and roc_auc(gain, planted) < 0.2
    assert np.median(gain[planted == 0]) > 1.2 * np.median(gain[planted == 1])


def test_sharpness_parameters_are_recorded():
    det = make_detector("jeon-sharpness", k=2)
    info = det.describe()
    assert info["params"]["k"] == 2 and info["higher_is_memorized"] and "jvp" in type(det).needs
    assert dataclasses.replace(det, k=1).k == 1
