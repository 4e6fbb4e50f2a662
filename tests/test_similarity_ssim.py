"""SSIM against scikit-image and MS-SSIM against an independent scipy.ndimage implementation."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from diffmem.similarity.ssim import (
    MS_SSIM_WEIGHTS,
    ms_ssim,
    ms_ssim_scales,
    pairwise_ms_ssim,
    pairwise_ssim,
    ssim,
    ssim_window,
)


def _pair(shape, seed, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *shape, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + noise * torch.randn(3, *shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x, y


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage_gaussian_wang_settings(channels):
    x, y = _pair((channels, 32, 32), channels)
    ref = [structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=2.0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(ssim(x, y).numpy(), ref, rtol=1e-10)


def test_ssim_on_8x8_digits_matches_skimage_defaults():
    """skimage's default (7x7 uniform window, sample covariance) reproduced on 8x8 images."""
    x, y = _pair((1, 8, 8), 7)
    ref = [structural_similarity(a[0].numpy(), b[0].numpy(), data_range=2.0) for a, b in zip(x, y, strict=True)]
    got = ssim(x, y, win_size=7, gaussian=False, sample_covariance=True)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)


def test_small_gaussian_window_matches_skimage_with_the_same_kernel():
    """On 8x8 the 11-tap window shrinks to 7; a 7-tap Gaussian (sigma 0.8) equals skimage's at that sigma."""
    x, y = _pair((1, 8, 8), 8)
    ref = [structural_similarity(a[0].numpy(), b[0].numpy(), data_range=2.0, gaussian_weights=True, sigma=0.8,
                                 use_sample_covariance=False) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(ssim(x, y, win_size=7, sigma=0.8).numpy(), ref, rtol=1e-10)
    assert len(ssim_window(8, 8)) == 7
    torch.testing.assert_close(ssim(x, y), ssim(x, y, win_size=7))  # the documented shrink rule


def _ms_ssim_reference(a, b, n_scales, weights):
    """Per image (C, H, W) numpy: Gaussian filtering by scipy.ndimage, valid region by cropping, 2x2 mean pooling."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    w = np.asarray(weights[:n_scales]) / np.sum(weights[:n_scales])
    out = 1.0
    for j in range(n_scales):
        side = min(a.shape[1:])
        radius = (min(11, side if side % 2 else side - 1) - 1) // 2
        f = lambda z, r=radius: np.stack([gaussian_filter(ch, 1.5, truncate=r / 1.5, mode="reflect") for ch in z])  # noqa: E731
        crop = (slice(None), slice(radius, a.shape[1] - radius), slice(radius, a.shape[2] - radius))
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
        cs = ((2 * cxy + c2) / (vx + vy + c2))[crop]
        lum = ((2 * mx * my + c1) / (mx**2 + my**2 + c1))[crop]
        value = (lum * cs).mean() if j == n_scales - 1 else cs.mean()
        out *= max(value, 0.0) ** w[j]
        h, wd = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
        a = a[:, :h, :wd].reshape(a.shape[0], h // 2, 2, wd // 2, 2).mean((2, 4))
        b = b[:, :h, :wd].reshape(b.shape[0], h // 2, 2, wd // 2, 2).mean((2, 4))
    return out


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 8, 8), (1, 25, 25)])
def test_ms_ssim_matches_scipy_reference(shape):
    x, y = _pair(shape, 9, noise=0.2)
    n = ms_ssim_scales(*shape[1:])
    ref = [_ms_ssim_reference(a.numpy(), b.numpy(), n, MS_SSIM_WEIGHTS) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(ms_ssim(x, y).numpy(), ref, rtol=1e-9)


def test_ms_ssim_properties():
    x, y = _pair((1, 32, 32), 10)
    torch.testing.assert_close(ms_ssim(x, y, weights=(1.0,)), ssim(x, y))  # one scale is SSIM
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(3, dtype=torch.float64))
    noisy = [ms_ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).mean().item() for s in (0.05, 0.2, 0.6)]
    assert noisy[0] > noisy[1] > noisy[2]
    assert ms_ssim_scales(8, 8) == 2 and ms_ssim_scales(256, 256) == 5


def test_pairwise_forms_hold_the_paired_values_on_the_diagonal():
    x, y = _pair((1, 16, 16), 11)
    torch.testing.assert_close(pairwise_ssim(x, y).diagonal(), ssim(x, y))
    torch.testing.assert_close(pairwise_ms_ssim(x, y).diagonal(), ms_ssim(x, y))
    assert pairwise_ssim(x, y[:2]).shape == (3, 2)


@pytest.mark.parametrize("call, match", [
    (lambda x: ssim(x, x[:, :, :8]), "sizes or channels differ"),
    (lambda x: ssim(x, x[:2]), "equal batch sizes"),
    (lambda x: ssim(x[:, 0], x[:, 0]), "4 dims"),
    (lambda x: ssim(x, x, data_range=0), "data_range"),
    (lambda x: ssim(x, x, win_size=4), "odd"),
    (lambda x: ms_ssim(x[..., :2, :2], x[..., :2, :2]), "min_side"),
    (lambda x: ssim(x.index_fill(0, torch.tensor([0]), float("nan")), x), "NaN"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(_pair((1, 16, 16), 12)[0])
