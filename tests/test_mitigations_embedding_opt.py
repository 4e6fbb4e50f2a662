"""Wen et al.'s prompt-embedding optimization: it lowers its own objective, stops at the target, counts its cost."""

import dataclasses

import pytest
import torch

from diffmem.detectors.counting import CountingDenoiser
from diffmem.mitigations.base import MITIGATIONS, make_mitigation
from diffmem.mitigations.embedding_opt import WenEmbedding, optimize_embedding
from diffmem.mitigations.first_step import RowAdamW, first_step, prompt_texts
from diffmem.sampling.trajectory import Recorder
from mitigation_subjects import snapshot, tiny_text_subject, unchanged


@pytest.fixture(scope="module")
def subject():
    return tiny_text_subject()[1]


def test_row_adamw_is_torch_adamw_and_a_stopped_row_stays_frozen():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    ref = p0.clone().requires_grad_()
    opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.01)
    ours = RowAdamW(p0.clone(), lr=0.05, weight_decay=0.01)
    for grad in grads:
        ref.grad = grad.clone()
        opt.step()
        ours.step(torch.arange(3), grad)
    assert torch.allclose(ours.p, ref.detach(), rtol=0, atol=64 * torch.finfo(torch.float64).eps)
    frozen = RowAdamW(p0.clone(), lr=0.05)
    frozen.step(torch.arange(3), grads[0])
    after_one = frozen.p[1].clone()
    frozen.step(torch.tensor([0, 2]), grads[1][[0, 2]])
    assert torch.equal(frozen.p[1], after_one)


def test_the_objective_falls_at_every_iteration_on_a_tiny_text_world(subject):
    prompts = subject.prompts[:2]
    cond, seeds = subject.cond([p for p in prompts for _ in range(2)]), [0, 1, 0, 1]
    _, losses = optimize_embedding(subject, cond, first_step(subject, seeds), lr=0.01, max_steps=6, target_loss=0.0)
    assert bool(torch.isfinite(losses).all())
    assert bool((losses[1:] < losses[:-1]).all()), losses


def test_a_row_stops_at_its_target_and_keeps_its_embedding(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [3, 4]
    start = first_step(subject, seeds)
    _, probe = optimize_embedding(subject, cond, start, lr=0.01, max_steps=1, target_loss=0.0)
    target = float(probe[0].mean())  # one row above, one below (distinct prompts, distinct seeds)
    edited, losses = optimize_embedding(subject, cond, start, lr=0.01, max_steps=3, target_loss=target)
    low = int(probe[0].argmin())
    assert bool(torch.isnan(losses[1:, low]).all()) and bool(torch.isfinite(losses[:, 1 - low]).all())
    assert torch.equal(edited.c["emb"][low], cond.c["emb"][low])
    assert not torch.equal(edited.c["emb"][1 - low], cond.c["emb"][1 - low])
    bos_ratio = edited.c["emb"][1 - low, 0] / cond.c["emb"][1 - low, 0]
    assert torch.allclose(bos_ratio, torch.full_like(bos_ratio, (1 - 0.01 * 0.01) ** 3))  # BOS: decay alone


def test_sampling_counts_the_optimization_as_vjp_rows_and_leaves_the_caller_alone(subject):
    counting = dataclasses.replace(subject, denoiser=CountingDenoiser(subject.denoiser))
    cond, seeds, saved = subject.cond(subject.prompts[:2]), [0, 1], snapshot(subject)
    before = {k: v.clone() for k, v in cond.c.items()}
    traj = WenEmbedding(target_loss=0.0, max_steps=3).sample(counting, cond, seeds, guidance=5.0,
                                                            recorder=Recorder(keep=()))
    assert counting.denoiser.vjp == 2 * 2 * 3 and counting.denoiser.nfe == 2 * 2 * subject.steps
    plain = subject.sample(cond, seeds, guidance=5.0, recorder=Recorder(keep=()))
    assert not torch.equal(traj.x_0, plain.x_0) and torch.equal(traj.x_T, plain.x_T)
    assert all(torch.equal(cond.c[k], before[k]) for k in before) and unchanged(subject, saved)


def test_a_target_above_every_magnitude_is_plain_sampling(subject):
    cond, seeds = subject.cond(subject.prompts[:3]), [0, 1, 2]
    traj = make_mitigation("wen-embedding", target_loss=1e9).sample(subject, cond, seeds, guidance=5.0)
    assert torch.equal(traj.x_0, subject.sample(cond, seeds, guidance=5.0).x_0)
    assert MITIGATIONS["wen-embedding"].knob == "target_loss" and 5.0 in WenEmbedding.grid


def test_rows_are_matched_to_prompt_texts_or_refused(subject):
    cond = subject.cond([subject.prompts[2], subject.prompts[0]])
    assert prompt_texts(subject, cond) == [subject.prompts[2].text, subject.prompts[0].text]
    other = subject.encode(["seven"])
    with pytest.raises(ValueError, match="pass texts"):
        prompt_texts(subject, other)
