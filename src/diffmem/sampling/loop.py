"""``sample``: the one denoising loop of diffmem.

Analyses, detectors and mitigations consume the :class:`Trajectory` it returns or act through its hooks and
interventions; none re-implements a loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffmem.denoiser import Denoiser
from diffmem.results import Provenance
from diffmem.sampling.guidance import Constant, Guidance, guide
from diffmem.sampling.hooks import Hook, Intervention
from diffmem.sampling.solvers import describe_solver, resolve_solver
from diffmem.sampling.trajectory import Recorder, Trajectory
from diffmem.schedules import Grid
from diffmem.seeding import SeededNoise
from diffmem.types import Cond, StepRecord

__all__ = ["sample", "as_guidance"]


def as_guidance(guidance) -> Guidance:
    """A :class:`Guidance` as given, or a number wrapped in :class:`Constant`."""
    if isinstance(guidance, Guidance):
        return guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
        raise ValueError(f"guidance must be a number or a Guidance schedule, got {guidance!r}")
    return Constant(float(guidance))


def _check_inputs(x_T, grid, cond, noise) -> None:
    if not isinstance(x_T, Tensor) or x_T.ndim < 2:
        raise ValueError(f"x_T must be a tensor [B, ...], got {type(x_T).__name__} {getattr(x_T, 'shape', '')}")
    if not bool(torch.isfinite(x_T).all()):
        bad = (~torch.isfinite(x_T)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"x_T contains NaN or inf (samples {bad})")
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be a diffmem.schedules.Grid, got {type(grid).__name__}")
    if not isinstance(cond, Cond):
        raise ValueError(f"cond must be a diffmem.Cond, got {type(cond).__name__}")
    if cond.batch_size != x_T.shape[0]:
        raise ValueError(f"x_T has batch size {x_T.shape[0]} but cond has batch size {cond.batch_size}")
    if noise is not None and len(noise) != x_T.shape[0]:
        raise ValueError(f"noise has {len(noise)} seeds but x_T has batch size {x_T.shape[0]}")


def _no_noise() -> Tensor:
    raise ValueError("this solver draws noise: pass noise=SeededNoise(seeds) to sample()")


def _guidance_norm(eps_c: Tensor, eps_u: Tensor) -> Tensor:
    """d_t = ‖ε_c − ε_u‖₂ per sample, subtracted in at least float32 (half precision loses the digits that tell
    memorized prompts apart; Wen et al., ICLR 2024 log it from fp16 models)."""
    dtype = torch.promote_types(eps_c.dtype, torch.float32)
    return (eps_c.to(dtype) - eps_u.to(dtype)).flatten(1).norm(dim=1)


def _weights(w, batch_size: int) -> Tensor:
    w = torch.as_tensor(w, dtype=torch.float64).cpu()
    return w.expand(batch_size).clone() if w.ndim == 0 else w


def sample(denoiser: Denoiser, x_T: Tensor, grid: Grid, cond: Cond, *, solver: str | Callable = "ddim",
           guidance: Guidance | float = 7.5, noise: SeededNoise | None = None, recorder: Recorder | None = None,
           hooks: Sequence[Hook] = (), interventions: Sequence[Intervention] = ()) -> Trajectory:
    """Run the reverse process from ``x_T`` over ``grid`` and return the recorded trajectory.

    Args:
        denoiser: any model behind the contract (returns ε_c and ε_u apart).
        x_T: initial latent [B, ...] (see :meth:`SeededNoise.randn`).
        grid: inference grid (:func:`~diffmem.schedules.discrete_grid` or ``continuous_grid``).
        cond: conditioning for both branches; ``cond.null`` may be ``None`` when the weight stays 1.
        solver: ``"ddim"``, ``"ddpm"``, ``"euler"`` or a step function (``functools.partial(ddim_step, eta=1)``).
        guidance: a number (constant CFG weight) or a :class:`Guidance` schedule.
        noise: per-sample streams for stochastic solvers (the same seeds that drew x_T).
        recorder: what to keep (default: every tensor field at every step, in the state's dtype, on CPU).
        hooks: observers; interventions: edits, applied in order.
    """
    guidance, step = as_guidance(guidance), resolve_solver(solver)
    recorder = recorder or Recorder()
    _check_inputs(x_T, grid, cond, noise)
    for iv in interventions:
        x_T, cond = iv.edit_x_T(x_T), iv.edit_cond(cond)
    n, B = len(grid), x_T.shape[0]
    draw = (lambda x: noise.randn_like(x)) if noise is not None else (lambda x: _no_noise())
    recording, d_hist = recorder.start(n), torch.empty(0, B, dtype=torch.float64)
    try:
        for h in hooks:
            h.on_start(x_T, cond, grid)
        x = x_T
        with torch.no_grad():
            for i in range(n):
                t, ab, ab_next = (float(grid.timesteps[i]), float(grid.alpha_bar[i]), float(grid.alpha_bar_next[i]))
                for iv in interventions:
                    x = _same_shape(iv.edit_x_t(i, t, x), x, "edit_x_t")
                pred = denoiser(x, grid.timesteps[i], cond, uncond=guidance.needs_uncond(i, n))
                d_t = None if pred.eps_u is None else _guidance_norm(pred.eps_c, pred.eps_u)
                d_row = torch.full((B,), math.nan, dtype=torch.float64) if d_t is None else d_t.double().cpu()
                d_hist = torch.cat([d_hist, d_row[None]])
                w = _weights(guidance.weight(i, n, t, d_hist), B)
                for iv in interventions:
                    w = _same_shape(iv.edit_weight(i, t, w, d_hist), w, "edit_weight")
                pred = guide(pred, w, x, ab)
                record = StepRecord(i, n, t, ab, ab_next, math.sqrt((1 - ab) / ab), w, d_t, x, pred)
                recording.add(record)
                for h in hooks:
                    h.on_step(record)
                x = step(x, pred, ab, ab_next, lambda x=x: draw(x))
        trajectory = recording.finish(x_T, x, _provenance(denoiser, step, grid, guidance, noise, interventions))
        for h in hooks:
            h.on_end(trajectory)
    finally:
        for h in hooks:
            h.close()
    return trajectory


def _same_shape(new: Tensor, old: Tensor, what: str) -> Tensor:
    if not isinstance(new, Tensor) or new.shape != old.shape:
        raise ValueError(f"{what} must return a tensor of shape {tuple(old.shape)}, got "
                         f"{tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__}")
    return new


def _provenance(denoiser, step, grid, guidance, noise, interventions) -> Provenance:
    return Provenance(model=denoiser.describe(), solver=describe_solver(step), grid=grid.spec,
                      guidance=guidance.to_dict(), seeds=None if noise is None else list(noise.seeds),
                      interventions=[iv.to_dict() for iv in interventions])
