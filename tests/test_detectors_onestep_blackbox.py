"""Webster's one-step black-box edge consistency: Sobel against scipy, consistency on synthetic edges, cost."""

import numpy as np
import torch
from scipy import ndimage

from detector_stubs import given_images, shift_subject
from diffmem.detectors import make_detector
from diffmem.detectors.onestep_blackbox import edge_consistency, sobel_magnitude


def test_sobel_matches_scipy_and_the_reference_threshold_scale():
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    ours = sobel_magnitude(grey)[:, 0].numpy()
    for b in range(2):
        im = grey[b, 0].numpy()
        ref = np.hypot(ndimage.sobel(im, axis=0), ndimage.sobel(im, axis=1))
        assert np.allclose(ours[b], ref, rtol=0, atol=64 * np.finfo(np.float64).eps)
        # Webster's rule: scipy's N-D Sobel of the H×W×3 image (smoothing across channels too), summed over
        # channels, > 1.5; on a grey image that sum is 12 × our channel-mean magnitude, so 1.5 <-> 0.125
        rgb = np.repeat(im[:, :, None], 3, axis=2)
        ref_sum = np.hypot(ndimage.sobel(rgb, axis=0), ndimage.sobel(rgb, axis=1)).sum(2)
        assert np.allclose(ref_sum, 12 * ours[b], rtol=0, atol=1e3 * np.finfo(np.float64).eps)
        assert ((ref_sum > 1.5) == (ours[b] > 0.125)).all()


def _edge_images(with_edge: list[bool]) -> torch.Tensor:
    x = -torch.ones(len(with_edge), 1, 8, 8, dtype=torch.float64)
    for i, e in enumerate(with_edge):
        if e:
            x[i, :, :, 4:] = 1.0  # a vertical step edge: columns 3 and 4 are edges (Sobel 4 on [0, 1] images)
    return x


def test_consistent_edges_on_synthetic_images():
    x = (_edge_images([True, True, True, False]) + 1) / 2
    assert edge_consistency(x[None], 0.125).tolist() == [2 * 8 / 64]  # 3 of 4 > 0.5: consistent
    x = (_edge_images([True, True, False, False]) + 1) / 2
    assert edge_consistency(x[None], 0.125).tolist() == [0.0]  # 2 of 4 is not more than half


def test_detector_scores_decoded_one_step_estimates_at_two_nfe():
    subject, den = shift_subject(torch.zeros(3, 1, 8, 8, dtype=torch.float64))
    imgs = torch.cat([_edge_images([True] * 4), _edge_images([True, False, True, False])])
    scores = make_detector("webster-edges").score(given_images(subject, imgs), subject.prompts[:2], [0, 1, 2, 3])
    assert scores.tolist() == [0.25, 0.0]
    assert den.rows == 2 * 2 * 4  # one guided step: ε_c and ε_u for each of 2 prompts × 4 generations
