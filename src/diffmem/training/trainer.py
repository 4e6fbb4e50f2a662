"""The ε-prediction training loop (Ho et al., 2020) with CFG dropout (Ho & Salimans, 2022), AdamW, EMA and
resumable checkpoints.

Determinism: every random draw of step s (rows, timesteps, noise, dropout) comes from a generator seeded by
(seed, s) alone, so resuming after a kill from the last checkpoint reproduces the uninterrupted run bit for bit
(on the same machine and thread count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmem.progress import progress_bar
from diffmem.schedules import DiscreteSchedule
from diffmem.subject import TrainingSet
from diffmem.training.checkpoint import load_state, save_state
from diffmem.training.config import TrainConfig
from diffmem.training.ema import EMA

__all__ = ["TrainingSet", "step_generator", "draw_batch", "eps_loss", "fit", "FitLog"]


@dataclass
class FitLog:
    """What a run reports: losses every ``every`` steps (mean over the interval), wall and process CPU seconds."""

    every: int = 50
    losses: list = None
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __post_init__(self):
        self.losses = [] if self.losses is None else self.losses


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step) (NumPy SeedSequence mixing)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_batch(ts: TrainingSet, cfg: TrainConfig, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x₀ [B, C, H, W], t [B], ε [B, C, H, W], condition ids [B, ...]) of step ``step``."""
    g = step_generator(cfg.seed, step)
    B = cfg.batch_size
    rows = torch.randint(len(ts.rows), (B,), generator=g)
    t = torch.randint(cfg.num_train_timesteps, (B,), generator=g)
    eps = torch.randn((B, *ts.images.shape[1:]), generator=g)
    drop = torch.rand(B, generator=g) < cfg.p_uncond
    cond = ts.cond[rows].clone()
    cond[drop] = ts.null
    return ts.images[ts.rows[rows]], t, eps, cond


def eps_loss(net: nn.Module, alpha_bar: Tensor, x0: Tensor, t: Tensor, eps: Tensor, cond) -> Tensor:
    """The ε-prediction training loss ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c)‖² (mean) of a WorldNet-like ``net``."""
    ab = alpha_bar[t].view(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return F.mse_loss(net(x_t, t, net.condition(cond)), eps)


def fit(net: nn.Module, ts: TrainingSet, cfg: TrainConfig, state_path: str | Path, *, progress: bool = True,
        callback: Callable[[int, float], None] | None = None, log: FitLog | None = None,
        alpha_bar: Tensor | None = None) -> EMA:
    """Train ``net`` (which must provide ``condition(ids)`` and ``forward(x_t, t, c)``) for ``cfg.steps``.

    ``alpha_bar`` is the training table ᾱ[0..T−1] (default: that of ``cfg.schedule``), e.g. a diffusers model's.

    Resumes from ``state_path`` when it exists and checkpoints there every ``cfg.checkpoint_every`` steps and at
    the end. ``callback(step, loss)`` runs after each step (an exception there stops the run like a kill).
    Returns the EMA of the weights.
    """
    if alpha_bar is None:
        alpha_bar = DiscreteSchedule.named(cfg.schedule, cfg.num_train_timesteps).alphas_cumprod.float()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(net, cfg.ema_decay)
    state_path, log = Path(state_path), log or FitLog()
    saved: dict = {}
    start = load_state(state_path, net=net, ema=ema, opt=opt, log=saved) if state_path.exists() else 0
    acc = _restore_log(log, saved, start)
    net.train()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with progress_bar(progress, "loss {task.fields[loss]:.4f}") as bar:
        task = bar.add_task("training", total=cfg.steps, completed=start, loss=float("nan"))
        for step in range(start, cfg.steps):
            loss = eps_loss(net, alpha_bar, *draw_batch(ts, cfg, step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            opt.step()
            ema.update(net, step)
            value = loss.item()
            acc.append(value)
            if (step + 1) % log.every == 0:
                log.losses.append([step + 1, sum(acc) / len(acc)])
                acc = []
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                save_state(state_path, step=step + 1, net=net, ema=ema, opt=opt,
                           log=_log_arrays(log, acc, wall0, cpu0))
            bar.update(task, advance=1, loss=value)
            if callback is not None:
                callback(step, value)
    net.eval()
    log.wall_s += time.perf_counter() - wall0
    log.cpu_s += time.process_time() - cpu0
    return ema


def _log_arrays(log: FitLog, acc: list, wall0: float, cpu0: float) -> dict[str, Tensor]:
    """The loss log so far (and the open interval's losses) as arrays, saved with each checkpoint."""
    return {"losses": torch.tensor(log.losses, dtype=torch.float64).reshape(-1, 2),
            "acc": torch.tensor(acc, dtype=torch.float64), "every": torch.tensor(log.every),
            "seconds": torch.tensor([log.wall_s + time.perf_counter() - wall0,
                                     log.cpu_s + time.process_time() - cpu0], dtype=torch.float64)}


def _restore_log(log: FitLog, saved: dict, start: int) -> list:
    """Put the log of the steps before ``start`` back into ``log``; returns the open interval's losses."""
    if not start:
        return []
    if "losses" not in saved:
        raise ValueError(f"the training state at step {start} has no loss log (written by an older diffmem); "
                         "delete state.safetensors to train from the start")
    if int(saved["every"]) != log.every:
        raise ValueError(f"the saved loss log averages every {int(saved['every'])} steps, not {log.every}; "
                         "resume with the same log interval")
    log.losses[:] = [[int(s), float(v)] for s, v in saved["losses"].tolist()]
    log.wall_s, log.cpu_s = (float(v) for v in saved["seconds"])
    return [float(v) for v in saved["acc"]]


