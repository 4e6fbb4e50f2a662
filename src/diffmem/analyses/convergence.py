"""Analysis A3 of Kim et al. (2025): trajectories from different seeds collapse onto one image.

Per step, the across-seed dispersion of x_t (and of x̂₀): V_k = Σ_s ‖z_k^(s) − mean_s z_k‖² / (d (N − 1)), the trace
of the across-seed covariance over d, and the mean pairwise distance. For memorized prompts V_k/V_0 falls early.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dispersion", "mean_pairwise_distance", "collapse_step", "convergence"]


def dispersion(z: Tensor) -> Tensor:
    """V per step for states [S, N, ...] (N ≥ 2 seeds): trace of the across-seed covariance divided by d."""
    if z.ndim < 3 or z.shape[1] < 2:
        raise ValueError(f"need states [S, N >= 2, ...], got shape {tuple(z.shape)}")
    return torch.stack([_dispersion(z_k.double().flatten(1)) for z_k in z])  # a step at a time: float64 copies of
    # one step, not of the whole trajectory


def _dispersion(zf: Tensor) -> Tensor:
    return (zf - zf.mean(0, keepdim=True)).pow(2).sum() / (zf.shape[1] * (zf.shape[0] - 1))


def mean_pairwise_distance(z: Tensor) -> Tensor:
    """Mean ‖z^(s) − z^(s')‖ over seed pairs s < s', per step, for states [S, N, ...] (a step at a time)."""
    n = z.shape[1]
    return torch.stack([torch.cdist(zf, zf).sum() for zf in (z_k.double().flatten(1) for z_k in z)]) / (n * (n - 1))


def collapse_step(ratio: Tensor, threshold: float = 0.1) -> int | None:
    """First step at which V_k/V_0 drops below ``threshold`` (None if it never does)."""
    below = (ratio < threshold).nonzero()
    return int(below[0]) if len(below) else None


def convergence(traj, threshold: float = 0.1) -> dict:
    """{"V_x_t", "V_ratio_x_t", "pairwise_x_t", "collapse_x_t"} and the same for x0_hat when it was kept."""
    out = {}
    for name in ("x_t", "x0_hat"):
        z = getattr(traj, name)
        if z is None:
            continue
        v = dispersion(z)
        out[f"V_{name}"], out[f"V_ratio_{name}"] = v, v / v[0]
        out[f"pairwise_{name}"] = mean_pairwise_distance(z)
        out[f"collapse_{name}"] = collapse_step(v / v[0], threshold)
    if not out:
        raise ValueError("the trajectory kept neither x_t nor x0_hat")
    return out
