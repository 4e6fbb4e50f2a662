"""SAIL: Adam on x_T lowers its finite-difference loss, which at a small step is the detector's sharpness statistic."""

import dataclasses

import pytest
import torch

from diffmem.detectors.counting import CountingDenoiser
from diffmem.detectors.probes import vp_sigma
from diffmem.mitigations.first_step import first_step
from diffmem.mitigations.sail import SAIL, first_step_sharpness, sail_loss, sail_x_T
from mitigation_subjects import snapshot, tiny_text_subject, unchanged


@pytest.fixture(scope="module")
def subject():
    return tiny_text_subject()[1]


def test_the_loss_is_the_finite_difference_of_the_guidance_score_plus_the_norm_prior(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [0, 1]
    start = first_step(subject, seeds)
    x, delta, alpha, sigma = start.x_T, 0.5, 0.05, vp_sigma(start.alpha_bar)

    def s(z):
        p = subject.denoiser(z, start.t, cond)
        return -(p.eps_c - p.eps_u) / sigma

    unit = s(x) / s(x).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (s(x + delta * unit) - s(x)).flatten(1).pow(2).sum(1) + alpha * x.flatten(1).pow(2).sum(1)
    got = sail_loss(subject, x, start, cond, delta=delta, alpha=alpha)
    assert torch.allclose(got, expected, rtol=1e6 * torch.finfo(torch.float64).eps)


def test_optimizing_x_T_lowers_the_loss(subject):
    cond, seeds = subject.cond([subject.prompts[0]] * 2 + [subject.prompts[1]]), [0, 1, 2]
    start = first_step(subject, seeds)
    _, losses = sail_x_T(subject, cond, start, lr=0.005, alpha=0.0, delta=0.5, threshold=0.0, max_steps=4)
    assert bool((losses[1:] < losses[:-1]).all()), losses  # a small step descends


def test_at_a_small_step_the_proxy_is_the_detectors_sharpness_over_the_score_norm(subject):
    """‖s^Δ(x + δŝ) − s^Δ(x)‖ = δ‖H^Δ s^Δ‖/‖s^Δ‖ + O(δ²): the proxy is the JVP statistic along the unit direction."""
    cond, seeds = subject.cond(subject.prompts[:2]), [0, 1]
    start = first_step(subject, seeds)
    delta = 1e-5
    proxy = sail_loss(subject, start.x_T, start, cond, delta=delta, alpha=0.0).sqrt() / delta
    pred = subject.denoiser(start.x_T, start.t, cond)
    s_norm = ((pred.eps_c - pred.eps_u) / vp_sigma(start.alpha_bar)).flatten(1).norm(dim=1)
    stat = first_step_sharpness(subject, start.x_T, start, cond)
    assert torch.allclose(proxy, stat / s_norm, rtol=1e-3), (proxy, stat / s_norm)


def test_cost_is_four_vjp_rows_and_one_direction_per_iteration(subject):
    counting = dataclasses.replace(subject, denoiser=CountingDenoiser(subject.denoiser))
    cond, saved = subject.cond(subject.prompts[:2]), snapshot(subject)
    SAIL(threshold=0.0, max_steps=2).sample(counting, cond, [0, 1], guidance=5.0)
    d = counting.denoiser
    assert (d.vjp, d.nfe) == (2 * 4 * 2, 2 * 2 * 2 + 2 * 2 * subject.steps) and unchanged(subject, saved)
