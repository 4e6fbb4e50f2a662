"""Multi-head attention with explicit probabilities, per-head gates and hook points (Vaswani et al., 2017).

Later analyses act on attention without forking the forward pass; :mod:`diffmem.attention` is the interface that
reaches these layers (and diffusers' alike):

* ``edit``: while hooked, an :class:`~diffmem.attention.edit.AttentionEdit` that edits the logits (key masks,
  logit re-scaling), observes the probabilities and gates the head outputs; ``None`` otherwise;
* ``head_mask`` [H]: a persistent gate ξ_h multiplying each head's output o_h before the shared output projection
  (Ye et al., 2025, Algorithm 1): ξ_h = 0 equals deleting the head's q/k/v slices and output columns;
* ``logits``, ``probs`` and ``heads`` are ``nn.Identity`` sub-modules the tensors flow through, so a plain
  ``register_forward_hook`` on ``attn.probs`` also observes the probabilities [B, H, N_q, N_k].

Attention is computed with explicit matmuls (no fused kernel): the sizes are tiny, and forward-mode AD and hooks
need the math path anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Attention"]


class Attention(nn.Module):
    """Self-attention (``context=None``) or cross-attention to ``context`` [B, M, kv_dim].

    Args:
        dim: width of the queries and of the output.
        heads: number of heads H (``dim`` must be divisible by H).
        kv_dim: width of the context; given for cross-attention layers (default: self-attention, width ``dim``).

    Example:
        >>> attn = Attention(8, 2)
        >>> attn(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads={heads}")
        self.num_heads, self.head_dim = heads, dim // heads
        self.is_cross_attention = kv_dim is not None
        self.edit = None  # an AttentionEdit while diffmem.attention hooks this layer
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.register_buffer("head_mask", torch.ones(heads))
        self.logits, self.probs, self.heads = nn.Identity(), nn.Identity(), nn.Identity()

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Attend from ``x`` [B, N, dim] to ``context`` (default ``x``).

        ``mask`` is boolean, True = may attend: a key mask [B, M] or a full mask [B or 1, N, M].
        """
        B, N, _ = x.shape
        H, d = self.num_heads, self.head_dim
        ctx = x if context is None else context
        q = self.to_q(x).view(B, N, H, d).transpose(1, 2)  # [B, H, N, d]
        k, v = self.to_kv(ctx).view(B, ctx.shape[1], 2, H, d).permute(2, 0, 3, 1, 4)  # 2 × [B, H, M, d]
        logits = (q @ k.transpose(-1, -2)) * d**-0.5
        if mask is not None:
            mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
            logits = logits.masked_fill(~mask, float("-inf"))
        edit = self.edit
        if edit is not None:
            logits = edit.edit_logits(logits)
        probs = self.probs(self.logits(logits).softmax(dim=-1))
        if edit is not None:
            edit.observe(probs)
        o = self.heads(probs @ v) * self.head_mask.view(1, H, 1, 1).to(x.dtype)  # o_h gated by ξ_h
        if edit is not None:
            o = edit.gate(o)
        return self.to_out(o.transpose(1, 2).reshape(B, N, H * d))
