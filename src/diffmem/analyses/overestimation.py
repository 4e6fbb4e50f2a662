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
    """k = ⟨x̂₀, x⟩/⟨x, x⟩ per draw [R]."""
    xf = x.flatten().to(x0_hat.dtype)
    return x0_hat.flatten(1) @ xf / (xf @ xf)


def guided_loss(denoiser, x: Tensor, cond: Cond, grid: Grid, *, g: Sequence[float] = (1, 3, 5, 7.5, 10),
                draws: int = 32, seed: int = 0, batch_size: int | None = None) -> GuidedLoss:
    """Analysis A1 for one (prompt, image) pair; ``cond`` holds one prompt (batch 1) with its null branch.

    Draw r uses seed ``seed + r`` at every timestep (common random numbers across t and g), so curves are
    smooth and comparable between prompts. ``batch_size``: draws per forward batch (None: all); every term is
    computed per draw and averaged at the end, so it changes the result only by float round-off.
    """
    if cond.batch_size != 1 or cond.null is None:
        raise ValueError(f"cond must hold one prompt with a null branch, got batch {cond.batch_size}, "
                         f"null={'set' if cond.null is not None else None}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    gs = torch.tensor([float(v) for v in g], dtype=torch.float64)
    eps = SeededNoise(range(seed, seed + draws), device=x.device, dtype=x.dtype).randn(x.shape)
    b = batch_size or draws
    rows = {k: [] for k in ("lc", "lu", "lg", "kc", "ku", "kg")}
    with torch.no_grad():
        for t, ab in zip(grid.timesteps, grid.alpha_bar.tolist(), strict=True):
            parts = [_per_draw(denoiser, x, eps[i:i + b], t, ab, cond, gs) for i in range(0, draws, b)]
            for k in rows:  # per-draw terms [..., R] → their mean over the draws
                rows[k].append(torch.cat([q[k] for q in parts], -1).mean(-1))
    f = {k: torch.stack(v).double() for k, v in rows.items()}
    return GuidedLoss(grid.timesteps, grid.alpha_bar, gs, f["lc"], f["lu"], f["lg"].T, f["kc"], f["ku"], f["kg"].T)


def _per_draw(denoiser, x: Tensor, eps: Tensor, t, ab: float, cond: Cond, gs: Tensor) -> dict[str, Tensor]:
    """At one timestep, for the draws ``eps`` [R, ...]: losses and overshoot factors per draw ([R], or [G, R] for
    the guided prediction at each g)."""
    x_t = ab**0.5 * x + (1 - ab) ** 0.5 * eps
    p = denoiser(x_t, t, cond.select(torch.zeros(len(eps), dtype=torch.long)), uncond=True)
    err = lambda e: (eps - e).flatten(1).pow(2).sum(1)
    guided = [cfg(p.eps_u, p.eps_c, float(w)) for w in gs]
    return {"lc": err(p.eps_c), "lu": err(p.eps_u), "lg": torch.stack([err(e) for e in guided]),
            "kc": _overshoot(x0_from_eps(x_t, p.eps_c, ab), x), "ku": _overshoot(x0_from_eps(x_t, p.eps_u, ab), x),
            "kg": torch.stack([_overshoot(x0_from_eps(x_t, e, ab), x) for e in guided])}
