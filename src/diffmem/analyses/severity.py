"""Memorization severity of one prompt's samples against its paired training image, with several judges
(Kim et al., 2025 used SSCD only; a single judge was the study's most criticized weakness).

- ``copy_rate``: fraction of seeds whose sample is a copy *of the paired image* by the 1/3 nearest-neighbour
  ratio rule against the training set (nearest distinct training item is x and ratio ≤ 1/3);
- ``l2_sim``: 1 − RMS distance to x divided by RMS of x (1 = identical; comparable across image sizes);
- ``cosine``: cosine similarity to x;
- ``ssim``: structural similarity to x (images [C, H, W] only).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.similarity.ssim import ssim

__all__ = ["severity", "paired_copy"]


def paired_copy(samples: Tensor, x: Tensor, train: Tensor, threshold: float = COPY_RATIO) -> Tensor:
    """Boolean [N]: sample n is a copy of ``x`` (its nearest distinct training item equals x, ratio ≤ threshold)."""
    ratio, nearest = nn_ratio(samples, train)
    is_x = (train[nearest].flatten(1).to(x.dtype) == x.flatten()).all(1)
    return is_x & (ratio <= threshold)


def severity(samples: Tensor, x: Tensor, train: Tensor, *, decode: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Mean severity over the N samples [N, ...] of one prompt (see the module docstring for the judges)."""
    if samples.shape[1:] != x.shape:
        raise ValueError(f"samples {tuple(samples.shape)} do not match the paired image {tuple(x.shape)}")
    out = {"copy_rate": float(paired_copy(samples, x, train).double().mean())}
    a, b = (decode(samples), decode(x[None])[0]) if decode else (samples, x)
    a, b = a.double(), b.double()
    rms = lambda v: v.flatten(1).pow(2).mean(1).sqrt()
    out["l2_sim"] = float((1 - rms(a - b) / rms(b[None])).mean())
    af, bf = a.flatten(1), b.flatten()
    out["cosine"] = float((af @ bf / (af.norm(dim=1) * bf.norm()).clamp_min(1e-300)).mean())
    if a.ndim == 4:  # SSIM is defined on images [C, H, W]
        out["ssim"] = float(ssim(a, b.expand_as(a)).mean())
    return out
