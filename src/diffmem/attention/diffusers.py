"""The attention interface on diffusers models: processors that observe and edit without forking any pipeline.

:class:`EditedAttnProcessor` replaces the stock ``AttnProcessor2_0`` of one ``Attention`` layer while hooked and
performs the same operations in the same order, so an edit that changes nothing is bitwise identical to the stock
layer (tested against the installed diffusers). Without a logit edit the output comes from the fused kernel and the
probabilities, when recorded, are computed on the side. Only ``AttnProcessor2_0`` (diffusers' default with
PyTorch 2) is replaced; any other processor raises, naming the layer, instead of being silently dropped. The
interface depends only on what is stable across diffusers versions (``Attention`` fields, ``set_processor``).

Physical head removal slices the head's rows of ``to_q``/``to_k``/``to_v`` and its columns of ``to_out[0]`` and
lowers ``heads``/``inner_dim`` (what the stock processor reads); a layer that loses every head gets
:class:`NoHeadsProcessor`. Only plain multi-head attention can be sliced (no grouped k/v, joint or cross-head norms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffmem.attention.base import BACKENDS, AttentionModel, kept_channels, sliced_linear
from diffmem.attention.edit import AttentionEdit

__all__ = ["DiffusersAttention", "EditedAttnProcessor", "NoHeadsProcessor"]


def _attention_class():
    """diffusers' ``Attention`` class, or None when diffusers is not installed (an optional dependency)."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:
        return None
    return Attention


class DiffusersAttention(AttentionModel):
    """:class:`~diffmem.attention.base.AttentionModel` over diffusers ``Attention`` layers (kinds: self, cross)."""

    backend = "diffusers"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        Attention = _attention_class()
        return Attention is not None and any(isinstance(m, Attention) for m in model.modules())

    def _find(self, model):
        Attention = _attention_class()
        modules = {n: m for n, m in model.named_modules() if Attention is not None and isinstance(m, Attention)}
        kinds = {n: "cross" if getattr(m, "is_cross_attention", False) else "self" for n, m in modules.items()}
        return modules, kinds

    def _heads(self, module) -> int:
        return int(module.heads)

    def _check_installable(self, name: str) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        proc = self.modules[name].processor
        if type(proc) is not AttnProcessor2_0:
            hint = ("it is already hooked; combine the edits into one AttentionHooks"
                    if isinstance(proc, EditedAttnProcessor) else
                    "diffmem reproduces only AttnProcessor2_0 (call model.set_attn_processor(AttnProcessor2_0()))")
            raise ValueError(f"attention layer {name!r} uses {type(proc).__name__}; {hint}")

    def _install(self, name: str, edit: AttentionEdit) -> None:
        self._check_installable(name)
        layer = self.modules[name]
        layer.set_processor(EditedAttnProcessor(edit, layer.processor))

    def _uninstall(self, name: str) -> None:
        layer = self.modules[name]
        if isinstance(layer.processor, EditedAttnProcessor):
            layer.set_processor(layer.processor.original)

    def _remove(self, name: str, removed: set[int], physically: bool) -> None:
        if not physically:
            raise ValueError("diffusers attention layers have no persistent head gate; remove heads physically "
                             "or gate them for a scope with hooks(head_masks=...)")
        attn = self.modules[name]
        _check_prunable(name, attn)
        H, d = attn.heads, attn.inner_dim // attn.heads
        keep, channels = kept_channels(H, d, removed)
        attn.to_q = sliced_linear(attn.to_q, rows=channels)
        attn.to_k = sliced_linear(attn.to_k, rows=channels)
        attn.to_v = sliced_linear(attn.to_v, rows=channels)
        attn.to_out[0] = sliced_linear(attn.to_out[0], cols=channels)
        attn.heads = attn.sliceable_head_dim = len(keep)
        attn.inner_dim = attn.inner_kv_dim = len(keep) * d
        if len(keep) == 0:
            attn.set_processor(NoHeadsProcessor())


def _check_prunable(name: str, attn) -> None:
    """Only plain multi-head attention can be sliced per head (no grouped k/v, no joint or cross-head norms)."""
    why = None
    if attn.inner_kv_dim != attn.inner_dim:
        why = f"grouped k/v heads (inner_kv_dim {attn.inner_kv_dim} != inner_dim {attn.inner_dim})"
    elif attn.add_k_proj is not None or attn.to_out is None:
        why = "joint (added k/v) attention"
    elif attn.norm_q is not None and getattr(attn.norm_q, "weight", None) is not None \
            and attn.norm_q.weight.shape[-1] == attn.inner_dim and attn.heads > 1:
        why = "a q/k norm across heads"
    if why:
        raise ValueError(f"attention layer {name!r} has {why}; head removal supports plain multi-head attention")


class NoHeadsProcessor:
    """Processor of a self-attention layer whose heads were all removed (Algorithm 1 sets no per-layer minimum).

    The stock processor divides by ``attn.heads``; with no head left the layer's output is the output projection of
    an empty head concatenation, i.e. ``to_out[0].bias`` at every token, exactly what zero gates on all heads give.
    """

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if hidden_states.ndim != 3:
            raise ValueError(f"NoHeadsProcessor expects tokens [B, N, C], got shape {tuple(hidden_states.shape)}")
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)  # [B, N, 0]: no head output
        out = attn.to_out[1](attn.to_out[0](empty))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class EditedAttnProcessor:
    """Drop-in for ``AttnProcessor2_0`` applying :class:`~diffmem.attention.edit.AttentionEdit` ``edit``;
    ``original`` is the processor it replaced (restored on removal)."""

    def __init__(self, edit: AttentionEdit, original):
        self.edit, self.original = edit, original

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
        out = self.edit.gate(self._attend(q, k, v, attention_mask))  # [B, heads, Q, head_dim]
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial_shape is not None:
            out = out.transpose(-1, -2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _mask_keys(self, attention_mask: Tensor | None, batch: int, key_len: int, q: Tensor) -> Tensor | None:
        keep = self.edit.kept_keys(batch, key_len)
        if keep is None:
            return attention_mask  # nothing removed: keep the stock kernel path (bitwise identity)
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep.to(q.device), -torch.inf)
        bias = bias[:, None, None, :]  # [B or 1, 1, 1, K]
        return bias if attention_mask is None else attention_mask + bias

    @staticmethod
    def _logits(q: Tensor, k: Tensor, attention_mask: Tensor | None) -> Tensor:
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # the scale the fused kernel uses
        return logits if attention_mask is None else logits + attention_mask

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor | None) -> Tensor:
        edit = self.edit
        if edit.logit_edit is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
            if edit.record is not None:  # observed on the side: the output stays the stock kernel's
                edit.observe(self._logits(q, k, attention_mask).softmax(-1))
            return out
        probs = edit.logit_edit(self._logits(q, k, attention_mask), edit.layer).softmax(-1)
        edit.observe(probs)
        return probs @ v


BACKENDS.append(DiffusersAttention)
