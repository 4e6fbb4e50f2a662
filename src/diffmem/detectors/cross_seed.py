"""Cross-seed similarity screen (Hintersdorf et al., NeurIPS 2024, "NeMo"): memorized prompts give every seed the
same noise-difference map.

Per seed s one conditional evaluation at the first step (guidance off: 1 NFE): δ_s = ε̂_s − x_T,s. At t ≈ T this is
the first-step x̂₀ up to sign and scale, so a memorized prompt draws its training image into every δ_s. Each δ_s is
normalized by min–max per channel map (the reference code's rule; ``normalize="state"`` uses one min and max over
the whole state), and the score is the mean SSIM (or MS-SSIM) over the seed pairs, with data range 1.

The reference code (``ml-research/localizing_memorization_in_diffusion_models``) reads the map after one sampler step
(its ``early_stopping=1``), computes its published threshold statistics at guidance 7 and compares maps by
torchmetrics' MS-SSIM with three equal scale weights; ``step``, ``guidance`` and ``metric="ms_ssim"`` reproduce
those choices (MS-SSIM uses at most three scales, weights 1/3, and needs maps of side ≥ 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors._generations import as_images, pair_mean, run_generations
from diffmem.detectors.base import CrossGeneration, register
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.ssim import pairwise_ms_ssim, pairwise_ssim
from diffmem.subject import Prompt, Subject

__all__ = ["CrossSeedSSIM", "normalize_maps"]

MS_SSIM_REFERENCE_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)  # torchmetrics betas=(0.33, 0.33, 0.33) in the reference code


def normalize_maps(delta: Tensor, per: str = "channel") -> Tensor:
    """Min–max normalization of maps [B, C, H, W] to [0, 1], per channel map or per whole state (a constant map
    becomes 0).

    >>> normalize_maps(torch.tensor([[[[1.0, 3.0]], [[0.0, -2.0]]]])).tolist()
    [[[[0.0, 1.0]], [[1.0, 0.0]]]]
    """
    dims = (-2, -1) if per == "channel" else (-3, -2, -1)
    lo, hi = delta.amin(dims, keepdim=True), delta.amax(dims, keepdim=True)
    return (delta - lo) / (hi - lo).clamp_min(torch.finfo(delta.dtype).tiny)


@register
@dataclass(frozen=True)
class CrossSeedSSIM(CrossGeneration):
    """Cross-seed similarity screen (Hintersdorf et al., NeurIPS 2024): mean pairwise SSIM of the normalized δ_s.

    Attributes:
        guidance: CFG weight of the evaluated prediction (1: conditional only, 1 NFE per seed).
        step: grid step whose state and prediction form δ (0: x_T; the reference code reads step 1).
        steps: grid length (None: the subject's default).
        metric: "ssim" or "ms_ssim".
        normalize: min–max per "channel" map or per whole "state".
    """

    name = "nemo-ssim"
    citation = ("Hintersdorf et al., Finding NeMo: Localizing Neurons Responsible for Memorization in Diffusion "
                "Models, NeurIPS 2024")
    higher_is_memorized = True
    needs = frozenset({"several_generations"})
    guidance: float = 1.0
    step: int = 0
    steps: int | None = None
    metric: str = "ssim"
    normalize: str = "channel"

    def __post_init__(self):
        if self.metric not in ("ssim", "ms_ssim"):
            raise ValueError(f"metric must be 'ssim' or 'ms_ssim', got {self.metric!r}")
        if self.normalize not in ("channel", "state"):
            raise ValueError(f"normalize must be 'channel' or 'state', got {self.normalize!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"step must be an int >= 0, got {self.step!r}")

    def maps(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        """Normalized δ maps [p·n, C, H, W] in [0, 1], prompt-major (row i·n + j = prompt i, seed j)."""
        n = self.steps or subject.steps
        if self.step >= n:
            raise ValueError(f"step {self.step} does not fit a {n}-step grid")
        traj = run_generations(subject, prompts, seeds, guidance=self.guidance, steps=n, first=self.step + 1,
                               recorder=Recorder(keep=("x_t", "eps")))
        eps, x_t = traj.eps[-1], traj.x_t[-1]  # the last recorded step is ``self.step``
        dtype = torch.promote_types(eps.dtype, torch.float32)
        return normalize_maps(as_images(eps.to(dtype) - x_t.to(dtype)), self.normalize)

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        maps = self.maps(subject, prompts, seeds)
        maps = maps.view(len(prompts), len(seeds), *maps.shape[1:])
        if self.metric == "ms_ssim":
            sims = [pairwise_ms_ssim(m, m, data_range=1.0, weights=MS_SSIM_REFERENCE_WEIGHTS) for m in maps]
        else:
            sims = [pairwise_ssim(m, m, data_range=1.0) for m in maps]
        return pair_mean(torch.stack(sims))
