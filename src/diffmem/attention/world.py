"""The attention interface on diffmem's own DiT and text encoder (:class:`diffmem.nets.attention.Attention`).

An edit is installed by setting the layer's ``edit`` attribute, which its forward consults (the layer computes the
same operations in the same order when the edit changes nothing, so it is bitwise the stock layer). Layers inside a
:class:`~diffmem.text.encoder.TextEncoder` are of kind ``"text"``, those with a context ``"cross"``, the others
``"self"`` (the DiT self-attention heads that Ye et al., 2025, prune). Heads are removed either by the persistent
zero gate ``head_mask`` (a buffer: fine-tuning leaves it at 0) or physically.
"""

from __future__ import annotations

import torch
from torch import nn

from diffmem.attention.base import BACKENDS, AttentionModel, kept_channels, sliced_linear
from diffmem.attention.edit import AttentionEdit
from diffmem.nets.attention import Attention
from diffmem.text.encoder import TextEncoder

__all__ = ["WorldAttention"]


class WorldAttention(AttentionModel):
    """:class:`~diffmem.attention.base.AttentionModel` over the :class:`~diffmem.nets.attention.Attention` layers."""

    backend = "world"
    persistent_gates = True

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return any(isinstance(m, Attention) for m in model.modules())

    def _find(self, model):
        text = [name for name, m in model.named_modules() if isinstance(m, TextEncoder)]
        modules, kinds = {}, {}
        for name, m in model.named_modules():
            if isinstance(m, Attention):
                modules[name] = m
                inside_text = any(name.startswith(f"{t}.") or not t for t in text)
                kinds[name] = "text" if inside_text else "cross" if m.is_cross_attention else "self"
        return modules, kinds

    def _heads(self, module) -> int:
        return module.num_heads

    def _check_installable(self, name: str) -> None:
        if self.modules[name].edit is not None:
            raise ValueError(f"attention layer {name!r} is already hooked; combine the edits into one AttentionHooks")

    def _install(self, name: str, edit: AttentionEdit) -> None:
        self._check_installable(name)
        self.modules[name].edit = edit

    def _uninstall(self, name: str) -> None:
        self.modules[name].edit = None

    def _remove(self, name: str, removed: set[int], physically: bool) -> None:
        attn = self.modules[name]
        if not physically:
            attn.head_mask[sorted(removed)] = 0
            return
        H, d = attn.num_heads, attn.head_dim
        keep, channels = kept_channels(H, d, removed)
        attn.to_q = sliced_linear(attn.to_q, rows=channels)
        attn.to_kv = sliced_linear(attn.to_kv, rows=torch.cat([channels, H * d + channels]))  # k then v halves
        attn.to_out = sliced_linear(attn.to_out, cols=channels)
        attn.head_mask = attn.head_mask[keep].clone()  # assigning a tensor to a registered buffer keeps it a buffer
        attn.num_heads = len(keep)


BACKENDS.append(WorldAttention)
