"""Memorization severity of one prompt's samples against its paired training image, with several judges
(Kim et al., 2025 used SSCD only; a single judge was the study's most criticized weakness).

- ``copy_rate``: fraction of seeds whose sample is a copy *of the paired image* by the 1/3 nearest-neighbour
  ratio rule against the training set (nearest distinct training item is x and ratio ≤ 1/3);
- ``l2_sim``: 1 − RMS distance to x divided by RMS of x (1 = identical; comparable across image sizes);
- ``cosine``: cosine similarity to x;
- ``ssim``: structural similarity to x (images [C, H, W] only).

Beyond the paired image (the authors' v1-era code): :func:`seed_severity`, agreement between the samples of
different seeds, needs no training image; :func:`template_copy`, the ratio rule on a template region only
(Webster, 2023's template verbatims).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffmem.analyses.convergence import mean_pairwise_distance
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.similarity.local import local_copy
from diffmem.similarity.ssim import pairwise_ssim, ssim

__all__ = ["severity", "paired_copy", "seed_severity", "template_copy"]


def paired_copy(samples: Tensor, x: Tensor, train: Tensor, threshold: float = COPY_RATIO) -> Tensor:
    """Boolean [N]: sample n is a copy of ``x`` (its nearest distinct training item equals x, ratio ≤ threshold)."""
    ratio, nearest = nn_ratio(samples, train)
    is_x = (train[nearest].flatten(1).to(x.dtype) == x.flatten()).all(1)
    return is_x & (ratio <= threshold)


def severity(samples: Tensor, x: Tensor, train: Tensor, *, decode: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Mean severity over the N samples [N, ...] of one prompt (see the module docstring for the judges)."""
    if samples.shape[1:] != x.shape:
        raise ValueError(f"samples {tuple(samples.shape)} do not match the paired image {tuple(x.shape)}")
    x, train = x.to(samples.device), train.to(samples.device)  # a model's latents may sit on its GPU
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


def seed_severity(samples: Tensor, *, decode: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Training-data-free severity of one prompt's N ≥ 2 samples [N, ...] (Kim et al., 2025, the authors' code):
    ``seed_l2``, the mean pairwise ‖x₀⁽ˢ⁾ − x₀⁽ˢ'⁾‖ in state space (lower = memorized), and ``seed_ssim``, the mean
    pairwise SSIM of the decoded images over the pairs s < s' (higher = memorized; images [C, H, W] only)."""
    if samples.shape[0] < 2:
        raise ValueError(f"seed-to-seed severity needs at least 2 samples, got {samples.shape[0]}")
    out = {"seed_l2": float(mean_pairwise_distance(samples[None])[0])}
    a = (decode(samples) if decode else samples).double()
    if a.ndim == 4:
        i, j = torch.triu_indices(len(a), len(a), 1)
        out["seed_ssim"] = float(pairwise_ssim(a, a)[i, j].mean())
    return out


def template_copy(samples: Tensor, train: Tensor, mask: Tensor, template: Tensor) -> float:
    """Fraction of samples [N, C, H, W] that copy the template region ``mask`` of ``template`` (the ratio rule on
    the region against the same region of every training image, nearest = the template's)."""
    return float(local_copy(samples, train, mask, template)["region"].double().mean())
