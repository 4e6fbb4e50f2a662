"""One-step black-box edge consistency (Webster, arXiv 2305.08694, 2023): verbatim copies come out sharp after a
single step, non-copies as a blurry mean.

Per generation the guided clean estimate after one step from x_T (x̂₀ at the first grid step: 2 NFE; one Euler step
from σ_max to 0 gives the same image), decoded and clamped to [−1, 1], then mapped to [0, 1]. Edge map: the 3×3 Sobel
magnitude per channel (unnormalized kernels, borders replicated), averaged over channels, > ``threshold``. The edge
maps of the generations are averaged and binarized at > ``consistency``; the score is the fraction of pixels that are
consistent edges. Higher = memorized.

Webster's code (``ryanwebster90/onestep-extraction``) resizes to 256² (``size=256``) and thresholds scipy's N-D Sobel
of an RGB image in [0, 1] summed over channels at 1.5; scipy also smooths across the channel axis ([1, 2, 1] with
reflection: a factor 4 on grey edges), so on grey edges 1.5 equals 1.5 / (3 · 4) = 0.125 of our per-channel mean,
the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmem.detectors._generations import images, run_generations
from diffmem.detectors.base import CrossGeneration, register
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["OneStepEdgeConsistency", "sobel_magnitude", "edge_consistency"]


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude per channel of images [B, C, H, W] (unnormalized 3×3 kernels, replicated borders).

    >>> x = torch.zeros(1, 1, 3, 4); x[..., 2:] = 1.0  # a vertical unit step
    >>> sobel_magnitude(x)[0, 0, 1].tolist()
    [0.0, 4.0, 4.0, 0.0]
    """
    c = x.shape[1]
    d = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    s = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kx, ky = torch.outer(s, d), torch.outer(d, s)  # derivative along width / height
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(pad, kx.expand(c, 1, 3, 3), groups=c)
    gy = F.conv2d(pad, ky.expand(c, 1, 3, 3), groups=c)
    return torch.hypot(gx, gy)


def edge_consistency(x: Tensor, threshold: float, consistency: float = 0.5) -> Tensor:
    """Fraction of pixels [p] that are edges in more than ``consistency`` of the generations x [p, n, C, H, W] in
    [0, 1] (edge: channel-mean Sobel magnitude > ``threshold``)."""
    p, n = x.shape[:2]
    edges = sobel_magnitude(x.flatten(0, 1)).mean(1) > threshold  # [p·n, H, W]
    agree = edges.view(p, n, *edges.shape[1:]).double().mean(1) > consistency
    return agree.flatten(1).double().mean(1)


@register
@dataclass(frozen=True)
class OneStepEdgeConsistency(CrossGeneration):
    """One-step black-box edge consistency (Webster, 2023): fraction of consistent Sobel edges over generations.

    Attributes:
        guidance: CFG weight of the one step.
        steps: grid whose first step is taken (None: the subject's default).
        threshold: edge threshold on the channel-mean Sobel magnitude of images in [0, 1].
        consistency: fraction of generations an edge pixel must exceed.
        size: resize images to size × size first (Webster: 256), bilinear with antialiasing; None keeps them.
    """

    name = "webster-edges"
    citation = "Webster, A Reproducible Extraction of Training Images from Diffusion Models, arXiv 2305.08694, 2023"
    higher_is_memorized = True
    needs = frozenset({"decode", "several_generations"})
    guidance: float = 7.5
    steps: int | None = None
    threshold: float = 0.125
    consistency: float = 0.5
    size: int | None = None

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        traj = run_generations(subject, prompts, seeds, guidance=self.guidance, steps=self.steps or subject.steps,
                               first=1, recorder=Recorder(keep=("x0_hat",)))
        x = images(subject, traj.x0_hat[0])
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True).clamp(-1, 1)
        x = (x + 1) / 2
        return edge_consistency(x.view(len(prompts), len(seeds), *x.shape[1:]), self.threshold, self.consistency)
