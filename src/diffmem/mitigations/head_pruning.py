"""One-shot attention-head pruning of a DiT (Ye et al., 2025, Algorithms 1-2; Michel et al., 2019).

Every self-attention head h carries a gate ξ_h (``Attention.head_mask``) that scales its output o_h before the
shared output projection. Algorithm 2 scores a head by S(h) = Σ_batches |∂L/∂ξ_h| at ξ = 1, with L the
ε-prediction loss at t ~ Beta(0.8, 2) (see :mod:`diffmem.mitigations.time_law`), and normalises per layer:
I(h) = S(h) / sqrt(Σ_{h' ∈ layer(h)} S(h')²). Algorithm 1 ranks all heads of all layers by I(h), removes the
⌊η·H⌋ least important (η = 0.2) and fine-tunes M steps with the training loss
(:func:`diffmem.training.trainer.fit`). Removal is either a fixed zero gate (:func:`mask_heads`) or physical
deletion of the head's q/k/v rows and output-projection columns (:func:`remove_heads`); both give the same outputs.

Heads are named by :class:`Head` (layer module path relative to the scored net, head index in that layer).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor, nn

from diffmem.nets.attention import Attention
from diffmem.nets.dit import DiT

__all__ = ["Head", "self_attention_layers", "head_gradients", "accumulate_scores", "normalise_per_layer",
           "rank_heads", "prune_count", "lowest_heads", "random_heads", "head_counts", "heads_by_layer", "mask_heads",
           "remove_heads", "kept_channels", "sliced_linear", "scoring_loss"]


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``layer`` is the module path of its :class:`Attention`, ``index`` its head number."""

    layer: str
    index: int


def self_attention_layers(net: nn.Module) -> dict[str, Attention]:
    """The self-attention layers ``…blocks.{i}.attn`` of every :class:`DiT` inside ``net`` (in block order).

    Cross-attention (``blocks.{i}.cross``) and text-encoder attention are left out: Ye et al. prune DiT
    self-attention heads only.
    """
    layers = {}
    for prefix, module in net.named_modules():
        if isinstance(module, DiT):
            for i, block in enumerate(module.blocks):
                layers[f"{prefix}.blocks.{i}.attn" if prefix else f"blocks.{i}.attn"] = block.attn
    if not layers:
        raise ValueError(f"no DiT self-attention layers found in {type(net).__name__}")
    return layers


def head_gradients(loss: Callable[[], Tensor], layers: Mapping[str, Attention]) -> dict[str, Tensor]:
    """∂L/∂ξ_h [H_l] per layer for one evaluation of ``loss()`` at the current gates (ξ = 1 unless masked).

    By the chain rule this is ⟨∂L/∂o_h, o_h⟩ at ξ_h = 1. Only the gates are differentiated (no parameter .grad
    is touched).
    """
    masks = [attn.head_mask for attn in layers.values()]
    flags = [m.requires_grad for m in masks]
    try:
        for m in masks:
            m.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss(), masks, allow_unused=True)
    finally:
        for m, flag in zip(masks, flags, strict=True):
            m.requires_grad_(flag)
    return {name: torch.zeros_like(m) if g is None else g.detach()
            for name, m, g in zip(layers, masks, grads, strict=True)}


def accumulate_scores(batch_loss: Callable[[int], Tensor], layers: Mapping[str, Attention],
                      num_batches: int) -> dict[str, Tensor]:
    """S(h) = Σ_{b < num_batches} |∂L_b/∂ξ_h| (abs per batch, Algorithm 2) with L_b = ``batch_loss(b)``."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    scores = {name: torch.zeros(attn.num_heads, dtype=torch.float64) for name, attn in layers.items()}
    for b in range(num_batches):
        for name, g in head_gradients(lambda b=b: batch_loss(b), layers).items():
            scores[name] += g.double().abs()
    return scores


def normalise_per_layer(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """I(h) = S(h) / ‖S(layer(h))‖₂, so Σ_{h ∈ layer} I(h)² = 1; a layer whose scores are all 0 stays 0
    (its heads then rank first, which is what an all-zero gradient says about them)."""
    out = {}
    for name, s in scores.items():
        if torch.any(s < 0) or not torch.all(torch.isfinite(s)):
            raise ValueError(f"scores of layer {name!r} must be finite and >= 0, got {s.tolist()}")
        norm = torch.linalg.vector_norm(s)
        out[name] = s / norm if norm > 0 else torch.zeros_like(s)
    return out


def rank_heads(importance: Mapping[str, Tensor]) -> list[Head]:
    """All heads, least important first (global ranking across layers); ties keep layer then head order."""
    heads = [Head(name, h) for name, v in importance.items() for h in range(len(v))]
    values = [float(importance[head.layer][head.index]) for head in heads]
    return [heads[i] for i in sorted(range(len(heads)), key=values.__getitem__)]  # sorted() is stable


def prune_count(total_heads: int, ratio: float) -> int:
    """⌊η·H⌋, computed on the decimal value of η so 0.29 · 100 gives 29, not 28 (binary rounding)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio!r}")
    return math.floor(Fraction(repr(float(ratio))) * total_heads)


def lowest_heads(importance: Mapping[str, Tensor], ratio: float = 0.2) -> list[Head]:
    """Algorithm 1 step 2: the ⌊η·H⌋ heads of lowest I(h) over all layers."""
    ranked = rank_heads(importance)
    return ranked[:prune_count(len(ranked), ratio)]


def head_counts(layers: Mapping[str, Attention]) -> dict[str, int]:
    """Heads per self-attention layer (H_l): what head selection needs to know of a model."""
    return {name: attn.num_heads for name, attn in layers.items()}


def random_heads(counts: Mapping[str, int], ratio: float = 0.2, seed: int = 0) -> list[Head]:
    """The random-pruning baseline of Ye et al. (Table 1): ⌊η·H⌋ heads drawn uniformly without replacement
    (``counts``: heads per layer, e.g. :func:`head_counts`)."""
    heads = [Head(name, h) for name, n in counts.items() for h in range(n)]
    pick = np.random.default_rng(seed).choice(len(heads), size=prune_count(len(heads), ratio), replace=False)
    return sorted(heads[i] for i in pick)


def heads_by_layer(counts: Mapping[str, int], heads: Iterable[Head]) -> dict[str, set[int]]:
    """Head indices per layer name, checked against ``counts`` (heads per layer)."""
    grouped: dict[str, set[int]] = {}
    for head in heads:
        if head.layer not in counts:
            raise ValueError(f"unknown attention layer {head.layer!r}; known: {sorted(counts)}")
        if not 0 <= head.index < counts[head.layer]:
            raise ValueError(f"head {head.index} out of range for layer {head.layer!r} "
                             f"with {counts[head.layer]} heads")
        grouped.setdefault(head.layer, set()).add(head.index)
    return grouped


@torch.no_grad()
def mask_heads(layers: Mapping[str, Attention], heads: Iterable[Head]) -> None:
    """Prune by a fixed zero gate ξ_h = 0 (the buffer is not a parameter, so fine-tuning leaves it at 0)."""
    for name, idx in heads_by_layer(head_counts(layers), heads).items():
        layers[name].head_mask[sorted(idx)] = 0


def kept_channels(num_heads: int, head_dim: int, removed: set[int]) -> tuple[Tensor, Tensor]:
    """(kept head indices, their q/k/v channels): kept head h owns channels h·d … h·d+d−1, in head order."""
    keep = torch.tensor([h for h in range(num_heads) if h not in removed], dtype=torch.long)
    return keep, (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def sliced_linear(layer: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output ``rows`` and input ``cols`` of ``layer`` (weights copied, bias sliced by rows)."""
    weight = layer.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    bias = None if layer.bias is None else (layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    with warnings.catch_warnings():  # a layer left with no heads has zero-element weights; init is skipped anyway
        warnings.simplefilter("ignore", UserWarning)
        new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                 device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


@torch.no_grad()
def remove_heads(layers: Mapping[str, Attention], heads: Iterable[Head]) -> None:
    """Delete heads physically: their rows of ``to_q`` and of the k and v halves of ``to_kv``, their columns of
    ``to_out``, their gate. Head indices refer to the layers *before* this call; the remaining heads are
    renumbered 0..H'−1 in order. A layer may lose all its heads (its output is then ``to_out.bias``).
    """
    for name, idx in heads_by_layer(head_counts(layers), heads).items():
        attn = layers[name]
        H, d = attn.num_heads, attn.head_dim
        keep, channels = kept_channels(H, d, idx)
        attn.to_q = sliced_linear(attn.to_q, rows=channels)
        attn.to_kv = sliced_linear(attn.to_kv, rows=torch.cat([channels, H * d + channels]))  # k then v halves
        attn.to_out = sliced_linear(attn.to_out, cols=channels)
        attn.head_mask = attn.head_mask[keep].clone()  # assigning a tensor to a registered buffer keeps it a buffer
        attn.num_heads = len(keep)


def scoring_loss(net: nn.Module, training_set, cfg, law: str = "beta", seed: int = 0) -> Callable[[int], Tensor]:
    """``batch_loss(b)``: the training loss of batch b (rows, noise, CFG dropout as in ``fit`` for ``cfg``) with t
    redrawn from ``law`` (Beta(0.8, 2) by default); batch b depends only on (``seed``, b).
    """
    from dataclasses import replace

    from diffmem.mitigations.time_law import draw_timesteps
    from diffmem.schedules import DiscreteSchedule
    from diffmem.training.trainer import draw_batch, eps_loss

    alpha_bar = DiscreteSchedule.named(cfg.schedule, cfg.num_train_timesteps).alphas_cumprod.float()
    cfg = replace(cfg, seed=seed)

    def batch_loss(b: int) -> Tensor:
        x0, _, eps, cond = draw_batch(training_set, cfg, b)
        t = draw_timesteps(len(x0), cfg.num_train_timesteps, seed=[seed, b, 1], law=law)
        return eps_loss(net, alpha_bar, x0, t, eps, cond)

    return batch_loss
