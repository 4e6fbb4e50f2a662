"""SSIM in torchmetrics' convention: against a brute-force reading of its documented formula, and against
torchmetrics itself where it is installed (the ``dev`` extra)."""

import numpy as np
import pytest
import torch

from diffmem.similarity.ssim import ssim, ssim_torchmetrics
from roundoff import order_atol


def brute_force(x: np.ndarray, y: np.ndarray, data_range: float, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM: reflect-pad by 5, an 11×11 Gaussian window (σ = 1.5, normalized) at every pixel, the map
    averaged over all pixels and channels; K1 = 0.01, K2 = 0.03."""
    size = int(3.5 * sigma + 0.5) * 2 + 1
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    pad, c1, c2 = size // 2, (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for a, b in zip(x, y, strict=True):
        vals = []
        for ac, bc in zip(a, b, strict=True):
            pa, pb = np.pad(ac, pad, mode="reflect"), np.pad(bc, pad, mode="reflect")
            for i in range(ac.shape[0]):
                for j in range(ac.shape[1]):
                    u, v = pa[i:i + size, j:j + size], pb[i:i + size, j:j + size]
                    mu, mv = (w * u).sum(), (w * v).sum()
                    vu, vv = max((w * u * u).sum() - mu**2, 0), max((w * v * v).sum() - mv**2, 0)
                    cov = (w * u * v).sum() - mu * mv
                    vals.append((2 * mu * mv + c1) * (2 * cov + c2) / ((mu**2 + mv**2 + c1) * (vu + vv + c2)))
        out.append(np.mean(vals))
    return np.array(out)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1
    return x, (x + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(-1, 1)


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 12, 14)])
def test_matches_the_documented_formula(shape):
    x, y = _pair(shape)
    ref = brute_force(y.numpy(), x.numpy(), data_range=2.0)
    got = ssim_torchmetrics(y, x, data_range=2.0, reduction="none")
    assert np.abs(got.numpy() - ref).max() <= order_atol(torch.from_numpy(ref))
    # data_range=None: the larger of the two batches' ranges; reductions
    inferred = float(max(x.max() - x.min(), y.max() - y.min()))
    ref = brute_force(y.numpy(), x.numpy(), data_range=inferred)
    assert float(ssim_torchmetrics(y, x)) == pytest.approx(ref.mean(), abs=order_atol(torch.from_numpy(ref)))
    assert float(ssim_torchmetrics(y, x, reduction="sum")) == pytest.approx(ref.sum(), rel=1e-12)
    # the default (valid-region) SSIM is another convention: it differs visibly on small images
    assert (ssim(y, x) - ssim_torchmetrics(y, x, data_range=2.0, reduction=None)).abs().max() > 1e-3


def test_range_clamp_and_errors():
    x, y = _pair((2, 1, 8, 8))
    torch.testing.assert_close(ssim_torchmetrics(3 * y, x, data_range=(-1.0, 1.0)),
                               ssim_torchmetrics((3 * y).clamp(-1, 1), x, data_range=2.0))
    with pytest.raises(ValueError, match="reduction"):
        ssim_torchmetrics(x, y, reduction="max")
    with pytest.raises(ValueError, match="too small"):
        ssim_torchmetrics(x[..., :4, :4], y[..., :4, :4])


def test_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    for shape in [(4, 1, 8, 8), (3, 3, 32, 32), (2, 3, 17, 23)]:
        x, y = (v.float() for v in _pair(shape, seed=1))
        for data_range in (None, 2.0, (-1.0, 1.0)):
            for reduction in ("elementwise_mean", "none", "sum"):
                ref = tm.structural_similarity_index_measure(y, x, data_range=data_range, reduction=reduction)
                got = ssim_torchmetrics(y, x, data_range=data_range, reduction=reduction)
                assert (got - ref).abs().max() <= order_atol(ref, ulps=16)  # measured: <= 2 ulps
