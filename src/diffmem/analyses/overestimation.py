"""Analysis A1 of Kim et al. (2025): the guided "training loss" and the early overestimation of the image.

For a prompt c with paired training image x, forward-noise x at every timestep of the sampling grid with R
noise draws, evaluate ε_c and ε_u there, and measure the denoising loss of ε_c, ε_u and the guided ε̃(g). Under
memorization x̂₀(c) ≈ x and x̂₀(∅) ≈ μ early, so x̂₀(c; g) ≈ μ + g(x − μ): the guided loss is *larger* than the
conditional one and grows with g, and the overshoot factor k_t = ⟨x̂₀(g), x⟩/⟨x, x⟩ is close to g.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.sampling.guidance import cfg
from diffmem.schedules import Grid, x0_from_eps
from diffmem.seeding import SeededNoise
from diffmem.types import Cond

__all__ = ["GuidedLoss", "guided_loss"]


@dataclass(frozen=True)
class GuidedLoss:
    """Per grid timestep [T]: losses ‖ε − ε̂‖² (summed over dimensions, averaged over R draws) of the
    conditional and unconditional branches, [G, T] of the guided prediction for each g in ``g``, and the
    overshoot factors k_t [G, T] (k_cond, k_uncond [T] for the branches)."""

    t: Tensor
    alpha_bar: Tensor
    g: Tensor
    loss_cond: Tensor
    loss_uncond: Tensor
    loss_guided: Tensor
    k_cond: Tensor
    k_uncond: Tensor
    k_guided: Tensor


def _overshoot(x0_hat: Tensor, x: Tensor) -> Tensor:
    """k = ⟨x̂₀, x⟩/⟨x, x⟩ per draw, averaged over draws."""
    xf = x.flatten().to(x0_hat.dtype)
    return (x0_hat.flatten(1) @ xf / (xf @ xf)).mean()


def guided_loss(denoiser, x: Tensor, cond: Cond, grid: Grid, *, g: Sequence[float] = (1, 3, 5, 7.5, 10),
                draws: int = 32, seed: int = 0) -> GuidedLoss:
    """Analysis A1 for one (prompt, image) pair; ``cond`` holds one prompt (batch 1) with its null branch.

    Draw r uses seed ``seed + r`` at every timestep (common random numbers across t and g), so curves are
    smooth and comparable between prompts.
    """
    if cond.batch_size != 1 or cond.null is None:
        raise ValueError(f"cond must hold one prompt with a null branch, got batch {cond.batch_size}, "
                         f"null={'set' if cond.null is not None else None}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    gs = torch.tensor([float(v) for v in g], dtype=torch.float64)
    eps = SeededNoise(range(seed, seed + draws), dtype=x.dtype).randn(x.shape)
    batch = cond.select(torch.zeros(draws, dtype=torch.long))
    rows = {k: [] for k in ("lc", "lu", "lg", "kc", "ku", "kg")}
    with torch.no_grad():
        for t, ab in zip(grid.timesteps, grid.alpha_bar.tolist(), strict=True):
            x_t = ab**0.5 * x + (1 - ab) ** 0.5 * eps
            p = denoiser(x_t, t, batch, uncond=True)
            err = lambda e: (eps - e).flatten(1).pow(2).sum(1).mean()
            rows["lc"].append(err(p.eps_c)), rows["lu"].append(err(p.eps_u))
            rows["kc"].append(_overshoot(x0_from_eps(x_t, p.eps_c, ab), x))
            rows["ku"].append(_overshoot(x0_from_eps(x_t, p.eps_u, ab), x))
            guided = [cfg(p.eps_u, p.eps_c, float(w)) for w in gs]
            rows["lg"].append(torch.stack([err(e) for e in guided]))
            rows["kg"].append(torch.stack([_overshoot(x0_from_eps(x_t, e, ab), x) for e in guided]))
    f = {k: torch.stack(v).double() for k, v in rows.items()}
    return GuidedLoss(grid.timesteps, grid.alpha_bar, gs, f["lc"], f["lu"], f["lg"].T, f["kc"], f["ku"], f["kg"].T)
