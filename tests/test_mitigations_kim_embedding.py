"""Kim et al.'s one-step embedding update: the true x̂_T coefficients, a sign step, the centres, the cost."""

import dataclasses
import math

import pytest
import torch

from diffmem.detectors.counting import CountingDenoiser
from diffmem.mitigations.first_step import first_step, guidance_gap
from diffmem.mitigations.kim_embedding import KimEmbedding, kim_loss, one_step_embedding
from diffmem.types import Cond
from mitigation_subjects import snapshot, tiny_text_subject, unchanged

EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def subject():
    return tiny_text_subject()[1]


def test_the_loss_uses_the_true_clean_estimate_and_the_coded_one_swaps_the_coefficients():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 1, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    ab = 0.0047
    x_T = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps  # forward process: x̂_T with the true ε is x0
    assert torch.allclose(kim_loss(x_T, eps, ab), x0.flatten(1).norm(dim=1), rtol=1e3 * EPS64)
    coded = (x_T - ab * eps) / math.sqrt(1 - ab)
    assert torch.allclose(kim_loss(x_T, eps, ab, loss="coded"), coded.flatten(1).norm(dim=1), rtol=1e3 * EPS64)


def test_one_adamw_step_is_a_sign_step_with_decoupled_decay_and_a_frozen_bos(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [0, 1]
    start = first_step(subject, seeds)
    lr, wd = 0.1, 0.01
    edited, _ = one_step_embedding(subject, cond, start, lr=lr, weight_decay=wd)
    e0 = cond.c["emb"]
    leaf = e0.clone().requires_grad_()
    eps_c = subject.denoiser(start.x_T, start.t, Cond({**cond.c, "emb": leaf})).eps_c
    (grad,) = torch.autograd.grad(kim_loss(start.x_T, eps_c, start.alpha_bar).sum(), leaf)
    grad[:, 0] = 0
    expected = e0 * (1 - lr * wd) - lr * grad / (grad.abs() + 1e-8)  # m̂ = g, v̂ = g²: lr·g/(|g| + eps)
    step = edited.c["emb"] - e0
    assert float((step - (expected - e0)).abs().max()) <= 1e3 * EPS64 * lr
    real = cond.c["mask"][:, 1:]  # non-BOS positions the model sees
    moved = (step[:, 1:] + lr * wd * e0[:, 1:]).abs()
    assert bool((moved[real] > 0.5 * lr).any())  # sign-sized moves on the tokens the model reads


def test_a_small_step_lowers_the_norm_of_the_clean_estimate(subject):
    cond, seeds = subject.cond([subject.prompts[0]] * 3), [0, 1, 2]
    start = first_step(subject, seeds)
    _, losses = one_step_embedding(subject, cond, start, lr=1e-3, n_steps=4, weight_decay=0.0)
    assert bool((losses[1:] < losses[:-1]).all()), losses


def test_the_uncond_centre_is_wens_objective_up_to_sigma_over_alpha(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [5, 6]
    start = first_step(subject, seeds)
    _, losses = one_step_embedding(subject, cond, start, center="uncond", lr=1e-3)
    gap = guidance_gap(subject.denoiser(start.x_T, start.t, cond)).double()
    ratio = math.sqrt(1 - start.alpha_bar) / math.sqrt(start.alpha_bar)
    assert torch.allclose(losses[0], ratio * gap, rtol=1e6 * EPS64)


def test_cost_is_one_backward_per_generation_and_the_caller_is_untouched(subject):
    counting = dataclasses.replace(subject, denoiser=CountingDenoiser(subject.denoiser))
    cond, saved = subject.cond(subject.prompts[:2]), snapshot(subject)
    emb = cond.c["emb"].clone()
    KimEmbedding().sample(counting, cond, [0, 1], guidance=5.0)
    assert (counting.denoiser.vjp, counting.denoiser.nfe) == (2, 2 * 2 * subject.steps)
    counting.denoiser.reset()
    KimEmbedding(center="mu_hat", mu_seeds=8).sample(counting, cond, [0, 1], guidance=5.0)
    assert (counting.denoiser.vjp, counting.denoiser.nfe) == (2, 8 + 2 * 2 * subject.steps)
    assert torch.equal(cond.c["emb"], emb) and unchanged(subject, saved)
    with pytest.raises(ValueError, match="center"):
        KimEmbedding(center="mean")
