"""Analysis A2 of Kim et al. (2025): what the noise predictions carry.

Signed cosines of ε_c, ε_u and the guided ε with the initial noise x_T and with the paired training image x, per
step and seed. ε_u aligns with x_T and is nearly orthogonal to x; under memorization ε_c has a clear *negative*
component along x (+x in x̂₀ is −x in ε), from the first step on.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["cosine", "noise_content"]


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last dimension (inputs already flattened; ``b`` broadcasts against ``a``)."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def noise_content(traj, x: Tensor) -> dict[str, Tensor]:
    """{"cos_eps_c_x", "cos_eps_c_xT", "cos_eps_u_x", "cos_eps_u_xT", "cos_eps_x", "cos_eps_xT"}: [S, N] each,
    for the N seeds of one prompt with paired image ``x`` [...]. Needs ``eps_c``, ``eps_u`` and ``eps`` kept."""
    out = {}
    for name in ("eps_c", "eps_u", "eps"):
        e = getattr(traj, name)
        if e is None:
            raise ValueError(f"the trajectory did not keep {name}: record it with Recorder(keep=(..., '{name}'))")
        e = e.flatten(2)  # [S, N, d]
        out[f"cos_{name}_x"] = cosine(e, x.flatten().to(e.device))  # x may sit on the model's GPU
        out[f"cos_{name}_xT"] = cosine(e, traj.x_T.flatten(1))
    return out
