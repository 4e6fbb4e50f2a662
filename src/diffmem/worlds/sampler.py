"""The sampling recipe of the pixel-space worlds: DDIM with x̂₀ clipped to the data range.

Pixel-space diffusion samplers clip the clean estimate to the data range before each update (Ho et al., 2020;
diffusers' ``DDIMScheduler(clip_sample=True, use_clipped_model_output=True)``, which re-derives ε from the clipped
x̂₀ as GLIDE does). Under strong guidance the guided x̂₀ = x̂₀_u + w (x̂₀_c − x̂₀_u) overshoots the data range
early in sampling (the overestimation Kim et al., 2025 analyse); without clipping an 8×8 pixel model then leaves
its training distribution. The recorded prediction keeps the *unclipped* ε̃ and x̂₀, so analyses see what the
model predicted; only the state update uses the clipped pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from diffmem.sampling.solvers import ddim_step
from diffmem.schedules import eps_from_x0
from diffmem.types import Prediction

__all__ = ["ClippedDDIM"]


@dataclass(frozen=True)
class ClippedDDIM:
    """DDIM step (Song et al., 2021) on x̂₀ clipped to [−bound, bound] with ε re-derived from it.

    A solver step function for :func:`diffmem.sample` (``solver=ClippedDDIM()``); its repr goes into provenance.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 2)
        >>> p = Prediction(x, None, torch.full((1, 2), -3.0), torch.full((1, 2), 5.0))
        >>> ClippedDDIM()(x, p, 0.5, 1.0).tolist()  # lands on the clipped x̂₀ when ᾱ' = 1
        [[1.0, 1.0]]
    """

    bound: float = 1.0
    eta: float = 0.0

    def __post_init__(self):
        if not self.bound > 0:
            raise ValueError(f"clip bound must be > 0, got {self.bound!r}")

    def __call__(self, x_t: Tensor, pred: Prediction, alpha_bar_t: float, alpha_bar_next: float,
                 noise=None) -> Tensor:
        x0 = pred.x0_hat.clamp(-self.bound, self.bound)
        eps = eps_from_x0(x_t, x0, alpha_bar_t)
        return ddim_step(x_t, Prediction(pred.eps_c, pred.eps_u, eps, x0), alpha_bar_t, alpha_bar_next, noise,
                         eta=self.eta)
