"""What an attention edit does inside one layer, shared by both backends (world DiT and diffusers).

An :class:`AttentionEdit` is what the attention interface installs in a layer while hooked; the layer's forward
calls it at three points, in this order:

* :meth:`AttentionEdit.edit_logits` on the scaled logits [B, H, Q, K]: removed keys get −∞ (the padding mask of
  Ren et al., ECCV 2024), then ``logit_edit(logits, layer)`` (Ren et al.'s BOS logit re-scaling);
* :meth:`AttentionEdit.observe` on the softmax probabilities [B, H, Q, K] actually used (cross-attention entropy,
  bright-ending maps);
* :meth:`AttentionEdit.gate` on the head outputs o_h [B, H, Q, d] before they are merged and projected: the head
  gate ξ_h of Michel et al. (NeurIPS 2019) and Ye et al. (2025, Algorithm 1); ξ_h = 0 removes the head.

The batch is the model batch: under classifier-free guidance diffmem's denoisers run [ε_u rows; ε_c rows], so
per-row masks are [B, H] (heads) or [B, K] (keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AttentionEdit", "LogitEdit", "per_batch"]

LogitEdit = Callable[[Tensor, str], Tensor]


def per_batch(mask: Tensor, batch: int, width: int, what: str, layer: str) -> Tensor:
    """A [width] or [batch, width] mask as [batch or 1, width], or a ValueError naming the layer."""
    if mask.ndim == 1 and mask.shape[0] == width:
        return mask[None]
    if mask.ndim == 2 and mask.shape == (batch, width):
        return mask
    raise ValueError(f"{what} for layer {layer!r} has shape {tuple(mask.shape)}; expected ({width},) or "
                     f"({batch}, {width})")


@dataclass(frozen=True)
class AttentionEdit:
    """What to do in the attention layer ``layer``; every field optional.

    Attributes:
        layer: the layer's qualified name (passed to ``logit_edit`` and ``record``).
        head_mask: ξ [H] or [B, H] multiplying each head's output (differentiable: importance scores).
        key_mask: bool [K] or [B, K], False = the key is removed.
        logit_edit: ``(logits [B, H, Q, K], layer) -> logits`` before the softmax.
        record: ``(layer, probs [B, H, Q, K]) -> None``.
    """

    layer: str
    head_mask: Tensor | None = None
    key_mask: Tensor | None = None
    logit_edit: LogitEdit | None = None
    record: Callable[[str, Tensor], None] | None = None

    def kept_keys(self, batch: int, keys: int) -> Tensor | None:
        """The key mask as bool [B or 1, K] (True = kept), or None when no key is removed."""
        if self.key_mask is None:
            return None
        keep = per_batch(self.key_mask.to(torch.bool), batch, keys, "key_mask", self.layer)
        if bool(keep.all()):
            return None
        if not bool(keep.any(dim=-1).all()):
            raise ValueError(f"key_mask for layer {self.layer!r} removes every key of a row")
        return keep

    def edit_logits(self, logits: Tensor) -> Tensor:
        """Removed keys to −∞, then ``logit_edit``: [B, H, Q, K] -> [B, H, Q, K]."""
        keep = self.kept_keys(logits.shape[0], logits.shape[-1])
        if keep is not None:
            logits = logits.masked_fill(~keep.to(logits.device)[:, None, None, :], float("-inf"))
        return logits if self.logit_edit is None else self.logit_edit(logits, self.layer)

    def observe(self, probs: Tensor) -> None:
        """Hand the probabilities [B, H, Q, K] to ``record``."""
        if self.record is not None:
            self.record(self.layer, probs)

    def gate(self, o: Tensor) -> Tensor:
        """Head outputs o [B, H, Q, d] times ξ_h (unchanged without a head mask)."""
        if self.head_mask is None:
            return o
        B, H = o.shape[:2]
        mask = per_batch(self.head_mask, B, H, "head_mask", self.layer)
        return o * mask.to(o.dtype).view(mask.shape[0], H, 1, 1)
