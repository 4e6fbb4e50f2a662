"""Latent decomposition z ≈ w0·x + wT·x_T and the schedule deviations D1, D2 (Kim et al., 2025, analysis A4).

Under the forward process a latent at ᾱ is √ᾱ·x + √(1−ᾱ)·ε; a memorizing sampler gains image (w0 above √ᾱ) and
loses noise (wT below √(1−ᾱ)) earlier than the schedule prescribes. D1 = Σ_k (E[w0_k] − √ᾱ(k)) and
D2 = −Σ_k (E[wT_k] − √(1−ᾱ(k))), summed over the latents after x_T and averaged over seeds first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["decompose", "schedule_deviation", "trajectory_latents", "Decomposition", "decompose_trajectory",
           "PAIRINGS", "generation_deviations"]

PAIRINGS = ("landed", "input")


def decompose(z: Tensor, x: Tensor, x_T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least squares z ≈ w0·x + wT·x_T by the 2×2 normal equations, in float64.

    Shapes: ``x_T`` is [B, ...] (one initial noise per sample), ``x`` is [B, ...] or [...] (one image for all),
    ``z`` is [*lead, B, ...]. Returns (w0, wT, ‖r‖/‖z‖), each [*lead, B].

    Example:
        >>> x, x_T = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
        >>> [round(v.item(), 12) for v in decompose(0.3 * x + 0.9 * x_T, x, x_T)]
        [0.3, 0.9, 0.0]
    """
    B, data = x_T.shape[0], x_T.shape[1:]
    x = x.to(x_T.device)  # a model's paired latents may live on its GPU, the recorded trajectory on the CPU
    if x.shape == data:
        x = x.expand_as(x_T)
    if x.shape != x_T.shape or z.shape[z.ndim - x_T.ndim:] != x_T.shape:
        raise ValueError(f"shapes do not match: z {tuple(z.shape)}, x {tuple(x.shape)}, x_T {tuple(x_T.shape)}")
    zf = z.double().reshape(*z.shape[:z.ndim - x_T.ndim], B, -1)
    x, x_T = x.double().reshape(B, -1), x_T.double().reshape(B, -1)
    xx, xt, tt = (x * x).sum(-1), (x * x_T).sum(-1), (x_T * x_T).sum(-1)
    det = xx * tt - xt * xt
    if bool((det <= 1e-12 * xx * tt).any()):
        raise ValueError("x and x_T are (nearly) collinear: the decomposition is not identifiable")
    bx, bt = (zf * x).sum(-1), (zf * x_T).sum(-1)
    w0, wT = (tt * bx - xt * bt) / det, (xx * bt - xt * bx) / det
    resid = zf - w0[..., None] * x - wT[..., None] * x_T
    return w0, wT, resid.norm(dim=-1) / zf.norm(dim=-1).clamp_min(1e-300)


def schedule_deviation(w0: Tensor, wT: Tensor, alpha_bar: Tensor) -> tuple[float, float]:
    """(D1, D2) from coefficients [S, N] (steps × seeds) and the ᾱ [S] each latent lives at."""
    ab = alpha_bar.double()
    d1 = (w0.double().mean(1) - ab.sqrt()).sum()
    d2 = -(wT.double().mean(1) - (1 - ab).sqrt()).sum()
    return float(d1), float(d2)


def trajectory_latents(traj, pairing: str = "landed") -> tuple[Tensor, Tensor]:
    """(latents z_k after x_T [S', B, ...], the reference ᾱ of each [S']) from a trajectory that kept ``x_t``.

    ``pairing`` "landed" (analysis A4): the state entering recorded step j lives at ᾱ = ``alpha_bar[j]``, the final
    x_0 at ``alpha_bar_next[-1]``; "input" (the authors' ``xt_decomposition``): the state after update k is compared
    with the ᾱ of that update's input, one step earlier. x_T itself (step 0) is excluded: it decomposes trivially
    to (0, 1).
    """
    if traj.x_t is None:
        raise ValueError("the trajectory did not keep x_t: record it with Recorder(keep=('x_t', ...))")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be 'landed' or 'input', got {pairing!r}")
    keep = traj.steps > 0
    z = torch.cat([traj.x_t[keep].to(traj.x_0.dtype), traj.x_0[None]])
    if pairing == "input":
        if len(traj.alpha_bar) != len(z):
            raise ValueError("pairing 'input' needs x_t recorded at every step (Recorder(every=1))")
        return z, traj.alpha_bar
    return z, torch.cat([traj.alpha_bar[keep], traj.alpha_bar_next[-1:]])


def generation_deviations(traj, x: Tensor, pairing: str = "landed") -> tuple[Tensor, Tensor]:
    """(D1, D2) per generation [B] of a trajectory that kept ``x_t`` at every step, against references x [B, ...]
    (or one image [...] for all), with the ᾱ reference of ``pairing`` (see :func:`trajectory_latents`)."""
    z, ab = trajectory_latents(traj, pairing)
    w0, wT, _ = decompose(z, x, traj.x_T)  # [S, B]
    ab = ab.double()[:, None]
    return (w0 - ab.sqrt()).sum(0), -(wT - (1 - ab).sqrt()).sum(0)


@dataclass(frozen=True)
class Decomposition:
    """Per-step coefficients [S, N] (N = seeds of one prompt), their residuals and the deviations."""

    w0: Tensor
    wT: Tensor
    resid: Tensor
    alpha_bar: Tensor
    D1: float
    D2: float


def decompose_trajectory(traj, x: Tensor, pairing: str = "landed") -> Decomposition:
    """Analysis A4 for the N seeds of one prompt: ``x`` is the paired training image [...] (or one target per
    seed [N, ...], e.g. each seed's own final x_0 for the self-referenced variant); ``pairing`` as in
    :func:`trajectory_latents`."""
    z, ab = trajectory_latents(traj, pairing)
    w0, wT, resid = decompose(z, x, traj.x_T)
    d1, d2 = schedule_deviation(w0, wT, ab)
    return Decomposition(w0, wT, resid, ab, d1, d2)
