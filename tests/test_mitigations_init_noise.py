"""Han et al.'s initial-noise adjustment: per-sample lowers the first-step magnitude (cost counted); batch-wise is
the sharpness step on x_T followed by late CFG."""

import dataclasses

import pytest
import torch

from diffmem.detectors.counting import CountingDenoiser
from diffmem.mitigations.first_step import first_step, guidance_gap
from diffmem.mitigations.init_noise import HanBatchwise, HanPerSample, batchwise_x_T, optimize_x_T
from diffmem.sampling.guidance import StaticTransition
from diffmem.sampling.hooks import Hook
from mitigation_subjects import snapshot, tiny_text_subject, unchanged


@pytest.fixture(scope="module")
def subject():
    return tiny_text_subject()[1]


class Seen(Hook):
    def on_start(self, x_T, cond, grid):
        self.x_T = x_T


def test_per_sample_lowers_the_first_step_magnitude(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [0, 1]
    start = first_step(subject, seeds)
    x_T, losses = optimize_x_T(subject, cond, start, lr=0.05, target_loss=0.0, max_steps=8)
    before = guidance_gap(subject.denoiser(start.x_T, start.t, cond))
    after = guidance_gap(subject.denoiser(x_T, start.t, cond))
    assert bool((after < 0.8 * before).all()), (before, after)
    assert torch.allclose(losses[0], before.double())


def test_per_sample_counts_its_backward_passes_and_stops_at_the_target(subject):
    counting = dataclasses.replace(subject, denoiser=CountingDenoiser(subject.denoiser))
    cond, seeds, saved = subject.cond(subject.prompts[:2]), [0, 1], snapshot(subject)
    seen = Seen()
    HanPerSample(target_loss=0.0, lr=0.05, max_steps=3).sample(counting, cond, seeds, guidance=5.0, hooks=[seen])
    assert (counting.denoiser.vjp, counting.denoiser.nfe) == (2 * 2 * 3, 2 * 2 * subject.steps)
    assert not torch.equal(seen.x_T, first_step(subject, seeds).x_T) and unchanged(subject, saved)
    counting.denoiser.reset()
    HanPerSample(target_loss=1e9).sample(counting, cond, seeds, guidance=5.0, hooks=[seen])
    assert counting.denoiser.vjp == 2 * 2 and torch.equal(seen.x_T, first_step(subject, seeds).x_T)


def test_batchwise_is_the_sharpness_step_then_late_guidance(subject):
    cond, seeds = subject.cond(subject.prompts[:2]), [0, 1]
    start = first_step(subject, seeds)
    x = start.x_T
    pred = subject.denoiser(x, start.t, cond)
    d = pred.eps_c - pred.eps_u
    far = subject.denoiser(x + 2.0 * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1), start.t, cond)
    expected = x - 0.7 * ((far.eps_c - far.eps_u) - d)
    got = batchwise_x_T(subject, cond, start, gamma=0.7, rho=2.0, iterations=1)
    assert torch.allclose(got, expected, rtol=0, atol=1e3 * torch.finfo(torch.float64).eps)
    traj = HanBatchwise(tau=500.0, rho=2.0, iterations=1).sample(subject, cond, seeds, guidance=5.0)
    w = traj.w  # [steps, B]
    late = torch.tensor([t <= 500 for t in subject.spec.grid.timesteps.tolist()])
    assert bool((w[~late] == 0).all()) and bool((w[late] == 5.0).all())
    plain = subject.sample(cond, seeds, guidance=StaticTransition(w=5.0, tau=500.0, w1=0.0))
    assert not torch.equal(traj.x_0, plain.x_0)
    with pytest.raises(ValueError, match="as a number"):
        HanBatchwise().sample(subject, cond, seeds, guidance=StaticTransition())
