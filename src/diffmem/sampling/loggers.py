"""Hooks that log a sampling run to TensorBoard or Weights & Biases: per step the guidance norm d_t = ‖ε_c − ε_u‖
(Wen et al., ICLR 2024: large at early steps for memorized prompts), the weight w and ‖x̂₀‖; at the end the final
samples' norms. Optional extras (``pip install diffmem[tensorboard]`` / ``diffmem[wandb]``); either hook also takes
any object with the same method (``add_scalar`` / ``log``), e.g. an open writer or run of your own.
"""

from __future__ import annotations

import math

import torch

from diffmem.sampling.hooks import Hook
from diffmem.types import StepRecord

__all__ = ["TensorBoardHook", "WandbHook", "step_scalars"]


def step_scalars(r: StepRecord) -> dict[str, float]:
    """The per-step numbers logged: batch means of d_t (NaN where ε_u was not evaluated), w and ‖x̂₀‖."""
    d = math.nan if r.d_t is None else float(r.d_t.double().mean())
    x0_norm = float(r.pred.x0_hat.flatten(1).norm(dim=1).mean())
    return {"d_t": d, "w": float(r.w.double().mean()), "x0_hat_norm": x0_norm, "t": r.t}


class TensorBoardHook(Hook):
    """Log each step's :func:`step_scalars` under ``{tag}/…`` with the step index as global step.

    ``writer``: a log directory (a ``torch.utils.tensorboard.SummaryWriter`` is opened there and closed at the end)
    or any object with ``add_scalar(tag, value, step)``."""

    def __init__(self, writer, tag: str = "diffmem"):
        if isinstance(writer, str) or hasattr(writer, "__fspath__"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("TensorBoardHook(logdir) needs tensorboard: pip install diffmem[tensorboard]") \
                    from err
            writer, self._own = SummaryWriter(str(writer)), True
        else:
            self._own = False
        self.writer, self.tag = writer, tag

    def on_step(self, record: StepRecord) -> None:
        for k, v in step_scalars(record).items():
            self.writer.add_scalar(f"{self.tag}/{k}", v, record.i)

    def on_end(self, trajectory) -> None:
        self.writer.add_scalar(f"{self.tag}/x_0_norm", float(trajectory.x_0.flatten(1).norm(dim=1).mean()),
                               len(trajectory.steps))

    def close(self) -> None:
        if self._own:
            self.writer.close()


class WandbHook(Hook):
    """Log each step's :func:`step_scalars` as ``{prefix}/…`` to a wandb run (default: ``wandb.run``, the active
    one), or to any object with ``log(dict, step=)``."""

    def __init__(self, run=None, prefix: str = "diffmem"):
        if run is None:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("WandbHook() needs wandb: pip install diffmem[wandb]") from err
            if wandb.run is None:
                raise ValueError("no active wandb run: call wandb.init(...) first or pass run=")
            run = wandb.run
        self.run, self.prefix = run, prefix

    def on_step(self, record: StepRecord) -> None:
        self.run.log({f"{self.prefix}/{k}": v for k, v in step_scalars(record).items()}, step=record.i)

    def on_end(self, trajectory) -> None:
        x0 = trajectory.x_0.flatten(1).norm(dim=1).mean()
        self.run.log({f"{self.prefix}/x_0_norm": float(torch.as_tensor(x0))}, step=len(trajectory.steps))
