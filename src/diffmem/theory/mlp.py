"""Time-conditioned MLP score networks for the Gaussian-mixture experiments (Ye, Zhu, Tao & Chen, 2025, §6.1).

Our default (the paper does not fix the architecture): a residual MLP with sinusoidal time features,
ε-prediction, trained with the DSM loss E‖ε_θ(α x + σ z, t) − z‖² (the σ²-weighted form of Eq. 3.1;
score = −ε/σ) by AdamW. The network is the class F(W, L, N) of Thm. 5.1 with width W = ``width`` and depth
L ≈ 2·``depth``; t enters as features of log t.
:class:`NetDenoiser` puts a trained net behind the one denoiser contract.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from diffmem.denoiser import Denoiser
from diffmem.schedules import VPSDESchedule

__all__ = ["ScoreMLP", "NetDenoiser", "TrainConfig", "train_score_net", "count_params"]


class ScoreMLP(nn.Module):
    """ε_θ(x_t, t): input layer on [x_t, γ(t)], ``depth`` residual blocks h += W₂ silu(W₁ silu(h) + V γ(t)), output.

    γ(t) = [sin(f_j log t), cos(f_j log t)] with ``time_dim / 2`` frequencies f_j log-spaced in [1/8, 8]:
    log t spans about [−7, 2.3] on the OU time axis, so these resolve small and large t alike.
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 2, time_dim: int = 32):
        super().__init__()
        if min(dim, width, time_dim) < 1 or depth < 0 or time_dim % 2:
            raise ValueError(f"need dim, width >= 1, depth >= 0 and an even time_dim, got {dim}, {width}, {depth}, "
                             f"{time_dim}")
        self.dim, self.width, self.depth = dim, width, depth
        self.register_buffer("freqs", torch.logspace(-3, 3, time_dim // 2, base=2.0))
        self.inp = nn.Linear(dim + time_dim, width)
        self.blocks = nn.ModuleList(_Block(width, time_dim) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def time_features(self, t: Tensor) -> Tensor:
        arg = torch.log(t.to(self.freqs.dtype))[:, None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], 1)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        gamma = self.time_features(t)
        h = self.inp(torch.cat([x_t, gamma], 1))
        for block in self.blocks:
            h = block(h, gamma)
        return self.out(nn.functional.silu(h))


class _Block(nn.Module):
    def __init__(self, width: int, time_dim: int):
        super().__init__()
        self.lin1, self.lin2, self.time = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(time_dim, width)

    def forward(self, h: Tensor, gamma: Tensor) -> Tensor:
        return h + self.lin2(nn.functional.silu(self.lin1(nn.functional.silu(h)) + self.time(gamma)))


def count_params(net: nn.Module) -> int:
    """Number of trainable weights and biases (N of Thm. 5.1, counting every entry)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class NetDenoiser(Denoiser):
    """A trained :class:`ScoreMLP` behind the denoiser contract (unconditional ε-prediction on the OU schedule)."""

    prediction_type = "epsilon"

    def __init__(self, net: ScoreMLP, name: str = "score_mlp"):
        self.net, self.schedule, self.name = net.eval(), VPSDESchedule(), name

    def describe(self) -> dict:
        return {**super().describe(), "width": self.net.width, "depth": self.net.depth,
                "params": count_params(self.net)}

    def model_output(self, x_t: Tensor, t: Tensor, c) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), t.to(dtype)).to(x_t.dtype)


@dataclass(frozen=True)
class TrainConfig:
    """DSM training of a :class:`ScoreMLP` (AdamW; cosine decay to 10 % after a 5 % warm-up).

    ``t_sampling``: ``"uniform"`` is U[t_lo, t_hi] (our default, t ∈ [1e-3, 10]); ``"log_uniform"`` puts equal
    mass on each decade, i.e. far more on small t where the empirical score is fitted (a CPU-budget deviation).
    """

    width: int = 128
    depth: int = 2
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    t_lo: float = 1e-3
    t_hi: float = 10.0
    t_sampling: str = "log_uniform"
    seed: int = 0

    def __post_init__(self):
        if self.t_sampling not in ("uniform", "log_uniform"):
            raise ValueError(f"t_sampling must be 'uniform' or 'log_uniform', got {self.t_sampling!r}")
        if not 0 < self.t_lo < self.t_hi:
            raise ValueError(f"need 0 < t_lo < t_hi, got {self.t_lo!r}, {self.t_hi!r}")
        if min(self.steps, self.batch_size, self.width) < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"bad training config {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def _draw_t(cfg: TrainConfig, n: int, g: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=g)
    if cfg.t_sampling == "uniform":
        return cfg.t_lo + (cfg.t_hi - cfg.t_lo) * u
    return torch.exp(math.log(cfg.t_lo) + (math.log(cfg.t_hi) - math.log(cfg.t_lo)) * u)


def train_score_net(X_train: Tensor, cfg: TrainConfig) -> tuple[ScoreMLP, list[float]]:
    """Train ε_θ on ``X_train`` [n, d] (float32); returns the net and the loss averaged over each 10 % of steps.

    Deterministic for ``cfg.seed``: initialization and every draw (indices, t, z) use seeded generators."""
    X = X_train.flatten(1).float()
    with torch.random.fork_rng(devices=[]):  # nn.Linear initialization has no generator argument
        torch.manual_seed(cfg.seed)
        net = ScoreMLP(X.shape[1], cfg.width, cfg.depth)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))))
    history, running, every = [], 0.0, max(1, cfg.steps // 10)
    net.train()
    for step in range(cfg.steps):
        x0 = X[torch.randint(X.shape[0], (cfg.batch_size,), generator=g)]
        t = _draw_t(cfg, cfg.batch_size, g)
        z = torch.randn(x0.shape, generator=g)
        ab = torch.exp(-t)[:, None]
        loss = ((net(ab.sqrt() * x0 + (1 - ab).sqrt() * z, t) - z) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % every == 0:
            history.append(running / every)
            running = 0.0
    return net.eval(), history
