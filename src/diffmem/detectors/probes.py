"""Probes of the first steps (Jeon et al., ICML 2025; Asthana & Belagiannis, ICLR 2026): states and derivatives.

Early-step detectors read the denoiser at chosen states: x_T itself, or the states entering the first k steps of the
guided trajectory (run by the one loop, never by a loop of their own), and take Jacobian products there. The
conventions the harness counts cost by:

* a JVP is a forward-mode pass: the state is a ``torch.autograd.forward_ad`` dual tensor, evaluated under the math
  SDPA kernel (flash and memory-efficient attention have no forward-mode derivative), restored on exit;
* a VJP is a reverse pass: :func:`torch.autograd.grad` of a scalar with respect to a state that ``requires_grad``.

States are float64 for the analytic oracles and the model's dtype otherwise; derivatives come back in at least
float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffmem.sampling.trajectory import Recorder
from diffmem.seeding import SeededNoise
from diffmem.subject import Subject
from diffmem.types import Cond

__all__ = ["initial_states", "guided_states", "vp_sigma", "jvp_eps", "upcast"]


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half-precision models lose the digits that separate prompts)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def vp_sigma(alpha_bar) -> float:
    """σ_t = √(1 − ᾱ_t), the VP noise std (``docs/notation.md``; code ``sigma`` elsewhere is the VE σ)."""
    return float(1.0 - float(alpha_bar)) ** 0.5


def _device(subject: Subject) -> torch.device:
    p = next(subject.net.parameters(), None) if subject.net is not None else None
    return p.device if p is not None else torch.device("cpu")


def initial_states(subject: Subject, seeds: Sequence[int], steps: int | None = None) -> Tensor:
    """x_T [B, *state] of each seed, drawn as :meth:`Subject.sample` draws it for a ``steps``-step run."""
    noise = SeededNoise(list(seeds), device=_device(subject), dtype=subject.dtype)
    return subject.sampler(steps or subject.steps).initial_latents(noise, subject.state_shape)


def guided_states(subject: Subject, cond: Cond, seeds: Sequence[int], k: int, *, guidance=7.5,
                  steps: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The states entering steps 0 … k−1 of the guided trajectory, [k, B, *state], with the grid's t and ᾱ [k].

    k = 1 is x_T itself (no denoiser call); otherwise the one loop runs the first k − 1 steps (2 NFE each under
    CFG) and the state after the last of them enters step k − 1."""
    grid = subject.sampler(steps or subject.steps).grid
    if cond.null is None:
        raise ValueError(f"probing {subject.name!r} needs the null branch (ε_u) of every prompt's conditioning")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(grid):
        raise ValueError(f"number of probed steps must be an int in [1, {len(grid)}], got {k!r}")
    if k == 1:
        states = initial_states(subject, seeds, steps)[None]
    else:
        traj = subject.sample(cond, seeds, guidance=guidance, steps=steps, first=k - 1,
                              recorder=Recorder(keep=("x_t",), device=str(_device(subject))))
        states = torch.cat([traj.x_t, traj.x_0[None].to(traj.x_t.device)])
    return states, grid.timesteps[:k], grid.alpha_bar[:k]


def jvp_eps(subject: Subject, x_t: Tensor, t, cond: Cond, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ε_c, ε_u, J_c v, J_u v) at x_t, J = ∂ε/∂x, by one forward-mode pass of both CFG branches along ``v``.

    The pair is one batched call of the denoiser on a dual state (the harness counts its rows as JVP rows)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), fwAD.dual_level():  # no reverse graph; tangents flow
        pred = subject.denoiser(fwAD.make_dual(x_t, v.to(x_t.dtype)), t, cond)
        (eps_c, jv_c), (eps_u, jv_u) = fwAD.unpack_dual(pred.eps_c), fwAD.unpack_dual(pred.eps_u)
    zero = torch.zeros_like(x_t)  # a branch that does not depend on x has no tangent
    return (upcast(eps_c), upcast(eps_u), upcast(zero if jv_c is None else jv_c),
            upcast(zero if jv_u is None else jv_u))
