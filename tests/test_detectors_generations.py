"""The cross-generation plumbing, and every detector of this group on latent-shaped float32 states with a decoder."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detector_stubs import shift_subject
from diffmem.detectors import make_detector
from diffmem.detectors._generations import as_images, pair_mean, run_generations
from diffmem.schedules import DiscreteSchedule
from diffmem.subject import closed_form_subject
from diffmem.theory.closed_form import GaussianMixtureDenoiser

NAMES = ["nemo-ssim", "carlini-tiled-l2", "webster-edges", "kim-d1", "kim-d2", "kim-d1-self", "kim-d2-self",
         "kim-seed-l2", "kim-seed-ssim", "chen-stability-band", "complexity"]


def test_image_views_and_pair_means():
    assert as_images(torch.zeros(2, 4, 3, 5, 6)).shape == (2, 12, 5, 6)
    m = torch.tensor([[[9.0, 1.0, 2.0], [1.0, 9.0, 3.0], [2.0, 3.0, 9.0]]])
    assert pair_mean(m).tolist() == [2.0]  # the upper triangle only


def test_rows_are_prompt_major():
    subject, den = shift_subject(torch.arange(4.0, dtype=torch.float64).view(4, 1, 1, 1).expand(4, 1, 2, 2))
    traj = run_generations(subject, subject.prompts[:3], [5, 6], guidance=1.0, first=1)
    assert [int(c) for c in traj.provenance.seeds] == [5, 6, 5, 6, 5, 6]
    assert den.rows == 6


@pytest.fixture(scope="module")
def latent_subject():
    """Float32 "latents" [4, 6, 6] decoded to RGB 12×12 images in [−1, 1] (a latent-model stand-in)."""
    g = torch.Generator().manual_seed(12345)  # not a sampling seed: seed 0's x_T would be collinear with x
    train = torch.randn(5, 4, 6, 6, generator=g).mul(0.5)
    den = GaussianMixtureDenoiser(train, DiscreteSchedule.named("scaled_linear"), var=0.05)
    subject = closed_form_subject(den, train, steps=6)

    def decode(z):
        return torch.tanh(F.interpolate(z[:, :3], scale_factor=2))

    return replace(subject, decode=decode)


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_latent_states_with_a_decoder(latent_subject, name):
    det = make_detector(name)
    if "calibration" in det.needs:
        det = det.fit(latent_subject, latent_subject.prompts, [10, 11, 12])
    scores = det.score(latent_subject, latent_subject.prompts, [0, 1, 2])
    assert latent_subject.dtype == torch.float32
    assert scores.shape == (len(latent_subject.prompts),) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
