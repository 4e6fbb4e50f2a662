"""A small Diffusion Transformer with optional class labels and token-level cross-attention.

The block is DiT's adaLN-Zero block (Peebles & Xie, ICCV 2023) with a PixArt-α-style cross-attention layer to the
text tokens between self-attention and the MLP (Chen et al., ICLR 2024). Every attention layer is a
:class:`~diffmem.nets.attention.Attention`, so per-head gates and attention probabilities are reachable by module
path: ``blocks.{i}.attn`` (self-attention heads, the pruning target of Ye et al., 2025) and ``blocks.{i}.cross``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmem.nets.attention import Attention

__all__ = ["DiTConfig", "DiT", "timestep_embedding"]


@dataclass(frozen=True)
class DiTConfig:
    """Shape of a :class:`DiT`.

    Attributes:
        image_size, channels: input is [B, channels, image_size, image_size].
        patch: patch side; the sequence has (image_size / patch)² tokens.
        width, depth, heads, mlp_ratio: transformer shape.
        num_classes: > 0 makes it class-conditional; label ``num_classes`` is the null class (ε_u).
        context_dim: > 0 adds cross-attention to text tokens of this width in every block.
    """

    image_size: int = 8
    channels: int = 1
    patch: int = 2
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    num_classes: int = 0
    context_dim: int = 0

    def __post_init__(self):
        for name in ("image_size", "channels", "patch", "width", "depth", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {v!r}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps [B] → [B, dim] (Vaswani et al., 2017; as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """adaLN-Zero self-attention + (optional) cross-attention + MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.cross = Attention(width, heads, kv_dim=context_dim) if context_dim else None
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if context_dim else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight), nn.init.zeros_(self.ada.bias)  # adaLN-Zero: each block starts as identity

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), context, mask)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """ε-prediction transformer on pixel patches.

    ``forward(x_t, t, labels=None, context=None, mask=None)``: ``t`` [B] model timesteps; ``labels`` [B] class ids
    (class-conditional models); ``context`` [B, L, context_dim] text-encoder outputs with boolean ``mask`` [B, L]
    (text-conditional models).

    Example:
        >>> net = DiT(DiTConfig(width=16, depth=1, heads=2, num_classes=10))
        >>> net(torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), labels=torch.tensor([1, 10])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg, w = config, config.width
        self.config = cfg
        self.grid = cfg.image_size // cfg.patch
        self.patchify = nn.Conv2d(cfg.channels, w, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.randn(1, self.grid**2, w) * 0.02)
        self.t_embed = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        self.label_embed = nn.Embedding(cfg.num_classes + 1, w) if cfg.num_classes else None
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio, cfg.context_dim) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(w, 2 * w)
        self.proj_out = nn.Linear(w, cfg.patch**2 * cfg.channels)
        for layer in (self.ada_out, self.proj_out):  # zero output at init (DiT)
            nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def _check(self, x, labels, context):
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"expected x_t [B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}], "
                             f"got {tuple(x.shape)}")
        if (labels is None) == (cfg.num_classes > 0):
            raise ValueError(f"labels must be given exactly when num_classes > 0 (num_classes={cfg.num_classes})")
        if (context is None) == (cfg.context_dim > 0):
            raise ValueError(f"context must be given exactly when context_dim > 0 (context_dim={cfg.context_dim})")

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, context: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        self._check(x, labels, context)
        B, p, g, C = x.shape[0], self.config.patch, self.grid, self.config.channels
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # [B, g², width]
        c = self.t_embed(timestep_embedding(t, 256).to(x.dtype))
        if self.label_embed is not None:
            c = c + self.label_embed(labels)
        for block in self.blocks:
            h = block(h, c, context, mask)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        out = self.proj_out(_modulate(self.norm_out(h), shift, scale))  # [B, g², p·p·C]
        return out.view(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)
