"""One attention interface for diffmem's world DiT and diffusers models.

``attention(net)`` returns the model's :class:`AttentionModel`: its layers (name, kind ``self``/``cross``/``text``,
number of heads) and heads; :meth:`AttentionModel.hooks` gates heads (ξ_h, differentiable for importance scores),
records self- and cross-attention probabilities, edits logits and masks keys, as a context manager and a sampling
hook that always restores the model; :meth:`AttentionModel.remove_heads` deletes heads. diffusers is imported only
when a diffusers model is handed in.

Example (a tiny world DiT):
    >>> from diffmem.nets.dit import DiT, DiTConfig
    >>> net = DiT(DiTConfig(width=16, depth=2, heads=2, num_classes=10))
    >>> att = attention(net)
    >>> att.head_counts()
    {'blocks.0.attn': 2, 'blocks.1.attn': 2}
    >>> with att.hooks(record="self", reduce=None) as rec:
    ...     _ = net(torch.randn(1, 1, 8, 8), torch.tensor([500]), labels=torch.tensor([3]))
    >>> rec.stacked("blocks.0.attn").shape
    torch.Size([1, 1, 2, 16, 16])
"""

import torch  # noqa: F401 (the doctest uses it)

from diffmem.attention import diffusers as _diffusers  # noqa: F401 (registers the backend)
from diffmem.attention.base import (
    KINDS,
    AttentionHooks,
    AttentionModel,
    ForwardHooks,
    Head,
    Layer,
    attention,
    heads_by_layer,
    mean_over_queries,
)
from diffmem.attention.edit import AttentionEdit
from diffmem.attention.world import WorldAttention

__all__ = ["attention", "AttentionModel", "AttentionHooks", "ForwardHooks", "AttentionEdit", "Head", "Layer", "KINDS",
           "WorldAttention", "heads_by_layer", "mean_over_queries"]
