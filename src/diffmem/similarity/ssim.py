"""Structural similarity: SSIM (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004) and MS-SSIM (Wang, Simoncelli &
Bovik, Asilomar 2003) on image batches [N, C, H, W].

Defaults follow Wang et al. 2004 and scikit-image's ``structural_similarity(gaussian_weights=True,
use_sample_covariance=False)``: an 11-tap Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, population
(co)variances, the SSIM map averaged over the positions where the window fits entirely ("valid" region, skimage's
crop) and over channels. ``data_range`` defaults to 2 because diffmem images live in [−1, 1].

**Small images** (digits are 8×8). A window cannot exceed the image, so the window *shrinks*: its size becomes the
largest odd number ≤ min(H, W) (11 → 7 on 8×8, leaving a 2×2 valid map), and a Gaussian window keeps σ = 1.5,
truncated to the new size and renormalized. scikit-image raises instead; pass ``win_size=7, gaussian=False,
sample_covariance=True`` to reproduce its defaults on 8×8 exactly.

**MS-SSIM** uses contrast-structure at every scale and full SSIM at the coarsest, with Wang et al.'s 5 weights and
2×2 average pooling (odd sizes floor) between scales: MS-SSIM = Π_j cs_j^{w_j} · ssim_M^{w_M}. Scales stop early
once the side would fall below ``min_side`` (3), so the window shrinks with the image as above; the weights of the
scales used are renormalized to sum to 1 (8×8 → 2 scales, 8 and 4 px, windows 7 and 3). Negative cs or SSIM values
are clamped to 0 before the fractional powers (as pytorch-msssim does), so MS-SSIM ∈ [0, 1].

**torchmetrics-compatible mode** (:func:`ssim_torchmetrics`, = ``torchmetrics.functional.
structural_similarity_index_measure``): the images are reflect-padded by half the window and the SSIM map is
averaged over *all* H × W positions (the border windows see mirrored pixels), the Gaussian window has
2·⌊3.5σ + 0.5⌋ + 1 taps (11 for σ = 1.5, whatever ``kernel_size`` says), variances are clamped at 0, and
``data_range=None`` means max(preds range, target range) over the whole batch. The defaults above differ from it
by up to ~0.03 (border averaging and data range); this mode reproduces it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmem.similarity.pixel import check_images

__all__ = ["ssim", "pairwise_ssim", "ms_ssim", "pairwise_ms_ssim", "ssim_window", "ms_ssim_scales",
           "ssim_torchmetrics", "MS_SSIM_WEIGHTS"]

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ssim_window(height: int, width: int, *, win_size: int = 11, sigma: float = 1.5,
                gaussian: bool = True) -> Tensor:
    """The 1-D window (float64, sums to 1) used on an H × W image: size min(win_size, largest odd ≤ min(H, W)).

    >>> len(ssim_window(8, 8)), len(ssim_window(64, 64))
    (7, 11)
    """
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd int, got {win_size!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    side = min(height, width)
    size = min(win_size, side if side % 2 else side - 1)
    if size < 1:
        raise ValueError(f"image of size {height}x{width} is too small for SSIM")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(r**2) / (2 * sigma**2)) if gaussian else torch.ones(size, dtype=torch.float64)
    return w / w.sum()


def _filter(x: Tensor, w: Tensor) -> Tensor:
    """Separable 'valid' filtering of [B, H, W] maps with the 1-D window w."""
    x = x[:, None]
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))[:, 0]


def _ssim_cs(x: Tensor, y: Tensor, data_range: float, win_size: int, sigma: float, gaussian: bool,
             sample_covariance: bool, k1: float, k2: float) -> tuple[Tensor, Tensor]:
    """(mean SSIM, mean contrast-structure) per matched pair of x, y [B, C, H, W]."""
    b, c, h, wd = x.shape
    w = ssim_window(h, wd, win_size=win_size, sigma=sigma, gaussian=gaussian).to(x.device, x.dtype)
    x, y = x.reshape(b * c, h, wd), y.reshape(b * c, h, wd)
    mu_x, mu_y = _filter(x, w), _filter(y, w)
    cov_norm = len(w) ** 2 / (len(w) ** 2 - 1) if sample_covariance and len(w) > 1 else 1.0
    var_x = cov_norm * (_filter(x * x, w) - mu_x**2)
    var_y = cov_norm * (_filter(y * y, w) - mu_y**2)
    cov = cov_norm * (_filter(x * y, w) - mu_x * mu_y)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).reshape(b, -1).mean(1), cs.reshape(b, -1).mean(1)


def _prepare(x: Tensor, y: Tensor, paired: bool, data_range: float) -> tuple[Tensor, Tensor]:
    check_images(x, y, paired=paired, ndim=4)
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(x.device, dtype)


def ssim(x: Tensor, y: Tensor, *, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5,
         gaussian: bool = True, sample_covariance: bool = False, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM of matched pairs x_i, y_i [N] (Wang et al., 2004).

    >>> x = torch.rand(2, 1, 16, 16) * 2 - 1
    >>> ssim(x, x).tolist()
    [1.0, 1.0]
    """
    x, y = _prepare(x, y, True, data_range)
    return _ssim_cs(x, y, data_range, win_size, sigma, gaussian, sample_covariance, k1, k2)[0]


def pairwise_ssim(x: Tensor, y: Tensor, **kw) -> Tensor:
    """SSIM of every x_i against every y_j [N, M] (one batched pass over y per x_i)."""
    check_images(x, y, ndim=4)
    return torch.stack([ssim(xi.expand_as(y), y, **kw) for xi in x.split(1)])


def ms_ssim_scales(height: int, width: int, *, max_scales: int = len(MS_SSIM_WEIGHTS), min_side: int = 3) -> int:
    """Number of MS-SSIM scales used on an H × W image: halve while the smaller side stays ≥ ``min_side``.

    >>> ms_ssim_scales(8, 8), ms_ssim_scales(25, 25), ms_ssim_scales(256, 256)
    (2, 4, 5)
    """
    if min(height, width) < min_side:
        raise ValueError(f"image of size {height}x{width} is smaller than min_side={min_side} for MS-SSIM")
    n, side = 1, min(height, width)
    while n < max_scales and side // 2 >= min_side:
        n, side = n + 1, side // 2
    return n


def ms_ssim(x: Tensor, y: Tensor, *, data_range: float = 2.0, weights=MS_SSIM_WEIGHTS, min_side: int = 3,
            win_size: int = 11, sigma: float = 1.5, gaussian: bool = True, sample_covariance: bool = False,
            k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """MS-SSIM of matched pairs x_i, y_i [N] (Wang et al., 2003); window options as for :func:`ssim`.

    >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
    >>> [round(v, 6) for v in ms_ssim(x, x).tolist()]
    [1.0, 1.0]
    """
    x, y = _prepare(x, y, True, data_range)
    n = ms_ssim_scales(*x.shape[-2:], max_scales=len(weights), min_side=min_side)
    w = torch.tensor(weights[:n], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    out = torch.ones(len(x), dtype=x.dtype, device=x.device)
    for j in range(n):
        s, cs = _ssim_cs(x, y, data_range, win_size, sigma, gaussian, sample_covariance, k1, k2)
        out = out * (s if j == n - 1 else cs).clamp_min(0) ** w[j]
        if j < n - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


def pairwise_ms_ssim(x: Tensor, y: Tensor, **kw) -> Tensor:
    """MS-SSIM of every x_i against every y_j [N, M]."""
    check_images(x, y, ndim=4)
    return torch.stack([ms_ssim(xi.expand_as(y), y, **kw) for xi in x.split(1)])


def ssim_torchmetrics(preds: Tensor, target: Tensor, *, data_range: float | tuple[float, float] | None = None,
                      sigma: float = 1.5, kernel_size: int = 11, gaussian: bool = True,
                      reduction: str | None = "elementwise_mean", k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """SSIM (Wang et al., 2004) exactly as torchmetrics computes it (see the module docstring): reflect padding,
    the map averaged over all positions, a Gaussian of 2·⌊3.5σ + 0.5⌋ + 1 taps (``kernel_size`` only for
    ``gaussian=False``), ``data_range`` None → inferred from the batch, a (min, max) pair → clamp to it.
    ``reduction``: ``"elementwise_mean"`` (a scalar), ``"sum"`` or ``"none"``/None (one value per image)."""
    check_images(preds, target, paired=True, ndim=4)
    if reduction not in ("elementwise_mean", "sum", "none", None):
        raise ValueError(f"reduction must be 'elementwise_mean', 'sum', 'none' or None, got {reduction!r}")
    if data_range is None:
        data_range = float(max(preds.max() - preds.min(), target.max() - target.min()))
    elif isinstance(data_range, tuple):
        preds, target = preds.clamp(*data_range), target.clamp(*data_range)
        data_range = data_range[1] - data_range[0]
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r} (constant images need an explicit range)")
    size = int(3.5 * sigma + 0.5) * 2 + 1 if gaussian else kernel_size
    w = ssim_window(size, size, win_size=size, sigma=sigma, gaussian=gaussian).to(preds.device, preds.dtype)
    pad = (size - 1) // 2
    b, c, h, wd = preds.shape
    if pad >= min(h, wd):
        raise ValueError(f"images {h}x{wd} are too small for reflect padding by {pad} (window {size}); "
                         "use a smaller sigma")
    x = F.pad(preds, (pad, pad, pad, pad), mode="reflect").reshape(b * c, h + 2 * pad, wd + 2 * pad)
    y = F.pad(target.to(preds), (pad, pad, pad, pad), mode="reflect").reshape(b * c, h + 2 * pad, wd + 2 * pad)
    mu_x, mu_y = _filter(x, w), _filter(y, w)
    var_x = (_filter(x * x, w) - mu_x**2).clamp_min(0)
    var_y = (_filter(y * y, w) - mu_y**2).clamp_min(0)
    cov = _filter(x * y, w) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    per_image = ((2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    per_image = per_image.reshape(b, -1).mean(1)
    if reduction == "elementwise_mean":
        return per_image.mean()
    return per_image.sum() if reduction == "sum" else per_image
