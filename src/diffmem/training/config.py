"""The optimization recipe of a world model (a typed dataclass config behind the CLI)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """How a world model is trained. Every random draw of step s depends only on (``seed``, s), so a run resumed
    from a checkpoint equals the uninterrupted run bit for bit.

    Attributes:
        steps: optimizer steps; batch_size: samples per step.
        lr, warmup, weight_decay, grad_clip: AdamW with linear warm-up then a constant rate.
        ema_decay: EMA of the weights used for sampling (warm-up: min(decay, (1 + s)/(10 + s))).
        p_uncond: CFG dropout — probability of replacing the condition by the null one (Ho & Salimans, 2022).
        schedule, num_train_timesteps: DDPM training noise schedule (``diffmem.schedules.DiscreteSchedule.named``);
            Stable Diffusion's ``scaled_linear`` by default, so timesteps mean what they mean in SD (Jain et al.'s
            τ = 500, 650 transfer) and most steps fall where the 8×8 image is still visible.
        seed: initialization and per-step randomness.
        checkpoint_every: steps between resumable checkpoints.
    """

    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    seed: int = 0
    checkpoint_every: int = 250

    def __post_init__(self):
        for name in ("steps", "batch_size", "num_train_timesteps", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        for name in ("warmup", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative int, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"TrainConfig.p_uncond must be in [0, 1), got {self.p_uncond!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"need weight_decay >= 0 and grad_clip > 0, got {self.weight_decay!r}, "
                             f"{self.grad_clip!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up to ``lr``, then constant."""
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr

    def to_dict(self) -> dict:
        return asdict(self)
