"""Complexity-only control (not a published detector; asked for by reviewers of Chen et al., ICLR 2025, and Ross et
al., ICLR 2025): simple images are confounded with memorization, so a detector should beat image complexity alone.

score = −c(x) of the final sample of one full guided generation, averaged over generations (declared: lower
complexity = memorized), with c one of
* ``"jpeg"``: JPEG bytes per pixel at a fixed quality (PIL, 8-bit grey or RGB; other channel counts are averaged to
  grey),
* ``"variance"``: pixel variance,
* ``"tv"``: total variation per pixel (mean absolute difference of horizontal and vertical neighbours, summed),
* ``"entropy"``: Shannon entropy (bits) of the 256-bin grey histogram.
It is a *control*: it should fail on a memorizer whose copies are no simpler than its novel samples (``control``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffmem.detectors._generations import images
from diffmem.detectors.base import PerGeneration, register, repeat_cond
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["Complexity", "image_complexity", "MEASURES"]

MEASURES = ("jpeg", "variance", "tv", "entropy")


def _uint8(x: Tensor) -> np.ndarray:
    """Images [B, C, H, W] in [−1, 1] -> uint8 [B, H, W] (grey) or [B, H, W, 3] (RGB)."""
    x = x if x.shape[1] in (1, 3) else x.mean(1, keepdim=True)
    u = ((x.double().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return u[..., 0] if u.shape[-1] == 1 else u


def _jpeg_bytes_per_pixel(x: Tensor, quality: int) -> Tensor:
    from PIL import Image

    sizes = []
    for a in _uint8(x):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / (a.shape[0] * a.shape[1]))
    return torch.tensor(sizes, dtype=torch.float64)


def _grey_entropy(x: Tensor) -> Tensor:
    grey = _uint8(x.mean(1, keepdim=True)).reshape(len(x), -1)
    counts = np.stack([np.bincount(g, minlength=256) for g in grey]).astype(np.float64)
    p = counts / counts.sum(1, keepdims=True)
    bits = np.log2(1.0 / np.where(p > 0, p, 1.0))  # log2(1/p), 0 on empty bins
    return torch.from_numpy((p * bits).sum(1))


def image_complexity(x: Tensor, measure: str = "jpeg", *, quality: int = 75) -> Tensor:
    """Complexity c(x) [B] of images [B, C, H, W] in [−1, 1] (see the module docstring for the measures).

    >>> flat = torch.zeros(2, 1, 8, 8); flat[1, :, :, 4:] = 1.0
    >>> image_complexity(flat, "tv").tolist(), image_complexity(flat, "entropy").tolist()
    ([0.0, 0.125], [0.0, 1.0])
    """
    if measure == "jpeg":
        return _jpeg_bytes_per_pixel(x, quality)
    x = x.double()
    if measure == "variance":
        return x.flatten(1).var(1, unbiased=False)
    if measure == "tv":
        dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
        dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
        return (dh + dw) / x[0].numel()
    if measure == "entropy":
        return _grey_entropy(x)
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


@register
@dataclass(frozen=True)
class Complexity(PerGeneration):
    """Complexity-only control: −c(final sample), averaged over generations; declared lower complexity = memorized.

    Attributes:
        measure: one of :data:`MEASURES`.
        quality: JPEG quality (``measure="jpeg"``).
        guidance: CFG weight of the generations.
        steps: grid length (None: the subject's default).
    """

    name = "complexity"
    citation = "complexity-only control (no paper; a baseline every image-based detector should beat)"
    higher_is_memorized = True
    needs = frozenset({"trajectory", "decode"})
    control = True  # expected to fail: it measures image simplicity, not memorization
    measure: str = "jpeg"
    quality: int = 75
    guidance: float = 7.5
    steps: int | None = None

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        out = []
        for index, batch_seeds in self.batches(prompts, seeds):
            traj = subject.sample(repeat_cond(subject, prompts, index), batch_seeds, guidance=self.guidance,
                                  steps=self.steps or subject.steps, recorder=Recorder(keep=()))
            out.append(-image_complexity(images(subject, traj.x_0), self.measure, quality=self.quality))
        return torch.cat(out).view(len(prompts), len(seeds))
