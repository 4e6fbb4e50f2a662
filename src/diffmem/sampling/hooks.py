"""Observers and the one typed channel for changing a run.

A :class:`Hook` *observes*: it is called at fixed points and returns nothing. ``close`` is always called when the
run ends, normally or by an exception, so a hook that registered module hooks can remove them there.

An :class:`Intervention` *changes* a run through narrowly typed edits: the initial latent, the
conditioning, the per-step latent (CAPTAIN-style injection) and the per-step guidance weight. Mitigations subclass it
and override only what they change; every edit is checked to keep the shape it was given.
"""

from __future__ import annotations

from torch import Tensor

from diffmem.schedules import Grid
from diffmem.types import Cond, StepRecord

__all__ = ["Hook", "Intervention"]


class Hook:
    """Observer of a sampling run (all methods optional)."""

    def on_start(self, x_T: Tensor, cond: Cond, grid: Grid) -> None:
        """Called once before the first step, after interventions edited x_T and cond."""

    def on_step(self, record: StepRecord) -> None:
        """Called at every step with a frozen record; must not modify its tensors."""

    def on_end(self, trajectory) -> None:
        """Called with the finished :class:`~diffmem.sampling.trajectory.Trajectory`."""

    def close(self) -> None:
        """Always called last, also after an exception: release module hooks and files here."""


class Intervention:
    """A change to a run (identity by default). Subclasses override the edits they need."""

    def edit_x_T(self, x_T: Tensor) -> Tensor:
        """Edit the initial latent before sampling (e.g. initial-noise optimization)."""
        return x_T

    def edit_cond(self, cond: Cond) -> Cond:
        """Edit the conditioning once before sampling (e.g. prompt-embedding optimization, caption noise)."""
        return cond

    def edit_x_t(self, i: int, t: float, x_t: Tensor) -> Tensor:
        """Edit the state entering step ``i`` (mid-trajectory injection)."""
        return x_t

    def edit_weight(self, i: int, t: float, w: Tensor, d_hist: Tensor) -> Tensor:
        """Edit the per-sample guidance weight [B] at step ``i``, seeing d_0 … d_i in ``d_hist`` [i + 1, B]."""
        return w

    def to_dict(self) -> dict:
        return {"kind": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")
                                                 and isinstance(v, (int, float, str, bool, type(None)))}}
