"""An attention processor that observes and edits diffusers attention without forking any model or pipeline.

:class:`EditedAttnProcessor` replaces the stock ``AttnProcessor2_0`` of one ``Attention`` layer and performs the same
operations in the same order (so an edit that changes nothing is bitwise identical to the stock layer), with three
optional interventions and one observation:

* ``head_mask`` [heads] or [batch, heads]: multiplies each head's attention output before the heads are merged and
  projected (Michel et al., NeurIPS 2019; the head pruning of Ye et al., 2025); 0 removes the head's contribution;
* ``key_mask`` [K] or [batch, K] (bool, False = removed): the key gets logit −∞ (the padding mask of Ren et al.,
  ECCV 2024);
* ``logit_edit(logits, layer) -> logits`` on the scaled logits [batch, heads, Q, K] before the softmax (Ren et al.'s
  BOS logit re-scaling); attention is then computed explicitly instead of by the fused kernel;
* ``record(layer, probs)``: receives the softmax probabilities [batch, heads, Q, K] actually used (e.g. cross-
  attention over the prompt tokens, for the entropy and bright-ending detectors).

The batch is the model batch: under classifier-free guidance diffmem's denoisers run [ε_u rows; ε_c rows].
Only ``AttnProcessor2_0`` (diffusers' default with PyTorch 2) is replaced; any other processor raises, naming the
layer, instead of being silently dropped. A test checks the bitwise identity against the installed diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttentionEdit", "EditedAttnProcessor", "attention_layers", "is_cross_attention"]

LogitEdit = Callable[[Tensor, str], Tensor]


def attention_layers(model: torch.nn.Module) -> dict:
    """All diffusers ``Attention`` modules of ``model`` by qualified name (e.g. ``...transformer_blocks.0.attn2``)."""
    from diffusers.models.attention_processor import Attention

    return {name: m for name, m in model.named_modules() if isinstance(m, Attention)}


def is_cross_attention(attn) -> bool:
    """Whether the layer attends to an external context (text tokens) rather than to its own input."""
    return bool(getattr(attn, "is_cross_attention", False))


@dataclass(frozen=True)
class AttentionEdit:
    """What to do in one attention layer; all fields optional (see module docstring for shapes)."""

    head_mask: Tensor | None = None
    key_mask: Tensor | None = None
    logit_edit: LogitEdit | None = None
    record: Callable[[str, Tensor], None] | None = None


def _per_batch(mask: Tensor, batch: int, width: int, what: str, layer: str) -> Tensor:
    """A [width] or [batch, width] mask as [batch or 1, width], or a ValueError naming the layer."""
    if mask.ndim == 1 and mask.shape[0] == width:
        return mask[None]
    if mask.ndim == 2 and mask.shape == (batch, width):
        return mask
    raise ValueError(f"{what} for layer {layer!r} has shape {tuple(mask.shape)}; expected ({width},) or "
                     f"({batch}, {width})")


class EditedAttnProcessor:
    """Drop-in for ``AttnProcessor2_0`` on the layer ``name`` applying :class:`AttentionEdit` ``edit``."""

    def __init__(self, name: str, edit: AttentionEdit, original):
        self.name, self.edit, self.original = name, edit, original

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial_shape is not None:  # [B, C, H, W] -> [B, HW, C]
            b, ch = spatial_shape[:2]
            hidden_states = hidden_states.view(b, ch, -1).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, key_len = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (s.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for s in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        attention_mask = self._mask_keys(attention_mask, batch, key_len, q)
        out = self._attend(q, k, v, attention_mask)  # [B, heads, Q, head_dim]
        if self.edit.head_mask is not None:
            mask = _per_batch(self.edit.head_mask, batch, attn.heads, "head_mask", self.name)
            out = out * mask.to(out.dtype).view(mask.shape[0], attn.heads, 1, 1)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial_shape is not None:
            out = out.transpose(-1, -2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _mask_keys(self, attention_mask: Tensor | None, batch: int, key_len: int, q: Tensor) -> Tensor | None:
        if self.edit.key_mask is None:
            return attention_mask
        keep = _per_batch(self.edit.key_mask.to(torch.bool), batch, key_len, "key_mask", self.name)
        if bool(keep.all()):
            return attention_mask  # nothing removed: keep the stock kernel path (bitwise identity)
        if not bool(keep.any(dim=-1).all()):
            raise ValueError(f"key_mask for layer {self.name!r} removes every key of a row")
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep.to(q.device), -torch.inf)
        bias = bias[:, None, None, :]  # [B or 1, 1, 1, K]
        return bias if attention_mask is None else attention_mask + bias

    def _logits(self, q: Tensor, k: Tensor, attention_mask: Tensor | None) -> Tensor:
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # the scale the fused kernel uses
        return logits if attention_mask is None else logits + attention_mask

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor | None) -> Tensor:
        edit = self.edit
        if edit.logit_edit is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
            if edit.record is not None:  # observed on the side: the output stays the stock kernel's
                edit.record(self.name, self._logits(q, k, attention_mask).softmax(-1))
            return out
        logits = edit.logit_edit(self._logits(q, k, attention_mask), self.name)
        probs = logits.softmax(-1)
        if edit.record is not None:
            edit.record(self.name, probs)
        return probs @ v
