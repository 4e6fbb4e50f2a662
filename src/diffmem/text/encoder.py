"""A small causal text transformer: token ids → per-token embeddings e_p [B, L, width].

Causal self-attention as in CLIP's text tower (Radford et al., 2021), so the ``<eos>`` embedding summarizes the whole
prompt and padding never changes the prompt's tokens. It is trained jointly with the denoiser (not frozen like
SD's CLIP), but its *output* is what the denoiser consumes, so prompt-embedding edits act on e_p exactly as in
Wen et al. (ICLR 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffmem.nets.attention import Attention

__all__ = ["TextEncoder"]


class _EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width))

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=causal)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token + position embeddings, ``depth`` pre-LN causal blocks, a final LayerNorm.

    Example:
        >>> enc = TextEncoder(vocab_size=10, max_len=6, width=16, depth=1, heads=2)
        >>> enc(torch.tensor([[1, 4, 2, 0, 0, 0]])).shape
        torch.Size([1, 6, 16])
    """

    def __init__(self, vocab_size: int, max_len: int, width: int = 128, depth: int = 2, heads: int = 4):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.01)
        self.blocks = nn.ModuleList(_EncoderBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token.weight, std=0.02)
        self.register_buffer("causal", torch.ones(max_len, max_len, dtype=torch.bool).tril()[None],
                             persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.ndim != 2 or ids.shape[1] != self.pos.shape[1]:
            raise ValueError(f"expected token ids [B, {self.pos.shape[1]}], got {tuple(ids.shape)}")
        x = self.token(ids) + self.pos
        for block in self.blocks:
            x = block(x, self.causal)
        return self.norm(x)
