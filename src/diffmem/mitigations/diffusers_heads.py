"""Head pruning of Ye et al. (2025, Algorithms 1-2) on diffusers DiT and PixArt transformers.

The diffusers counterpart of :mod:`diffmem.mitigations.head_pruning` (whose ranking functions it reuses):

* the prunable layers are the self-attention ``Attention`` modules (``attn1``; PixArt's caption cross-attention
  ``attn2`` is left alone, as Ye et al. prune DiT self-attention only);
* the gates ξ_h are the ``head_mask`` of :class:`~diffmem.adapters.attention.EditedAttnProcessor`, installed by
  :class:`~diffmem.sampling.module_hooks.AttentionHooks` only while scoring (the stock processors come back after,
  also after an exception); at ξ = 1 the gated model is bitwise the stock one, and autograd gives ∂L/∂ξ_h =
  ⟨∂L/∂o_h, o_h⟩;
* removal slices the head's rows of ``to_q``/``to_k``/``to_v`` and its columns of ``to_out[0]`` and lowers
  ``heads`` / ``inner_dim`` (what the stock processor reads); a layer that loses every head gets
  :class:`NoHeadsProcessor` (its output is ``to_out[0].bias``, as with every gate at 0);
* a pruned model is saved as its state dict (safetensors) plus ``pruned_heads.json``, and rebuilt from the
  original local directory by :func:`load_pruned`.

Example (``dit`` a :class:`~diffmem.adapters.dit.DiTAdapter`, ``batch_loss(b)`` the loss of scoring batch b):
    scores = head_scores(dit.model, batch_loss, num_batches=100)
    heads = lowest_heads(normalise_per_layer(scores), 0.2)
    remove_heads(dit.model, heads)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffmem.io import read_arrays, read_json, write_arrays, write_json
from diffmem.mitigations.head_pruning import (
    Head,
    accumulate_scores,
    heads_by_layer,
    kept_channels,
    random_heads,
    sliced_linear,
)

__all__ = ["self_attention_layers", "head_counts", "head_scores", "random_model_heads", "remove_heads",
           "NoHeadsProcessor", "save_pruned", "load_pruned", "PRUNED_HEADS_FILE", "WEIGHTS_FILE"]

PRUNED_HEADS_FILE = "pruned_heads.json"
WEIGHTS_FILE = "transformer.safetensors"
_ADAPTERS = {"DiTPipeline": "diffmem.adapters.dit:DiTAdapter",
             "PixArtAlphaPipeline": "diffmem.adapters.pixart:PixArtAdapter",
             "PixArtSigmaPipeline": "diffmem.adapters.pixart:PixArtAdapter"}


@dataclass
class _Gates:
    """What head_pruning's scoring reads of a layer: its head count and its gate vector ξ [H]."""

    num_heads: int
    head_mask: Tensor


def self_attention_layers(model: nn.Module) -> dict:
    """The non-cross-attention diffusers ``Attention`` layers of ``model`` by qualified name, in module order."""
    from diffmem.adapters.attention import attention_layers, is_cross_attention

    layers = {n: m for n, m in attention_layers(model).items() if not is_cross_attention(m)}
    if not layers:
        raise ValueError(f"no diffusers self-attention layers found in {type(model).__name__}")
    for name, attn in layers.items():
        _check_prunable(name, attn)
    return layers


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


def head_counts(model: nn.Module) -> dict[str, int]:
    """Heads per self-attention layer (H_l)."""
    return {name: int(attn.heads) for name, attn in self_attention_layers(model).items()}


def head_scores(model: nn.Module, batch_loss: Callable[[int], Tensor], num_batches: int) -> dict[str, Tensor]:
    """Algorithm 2: S(h) = Σ_b |∂L_b/∂ξ_h| [H_l] per self-attention layer, float64, gates at ξ = 1.

    ``batch_loss(b)`` evaluates ``model`` on scoring batch b; while it runs, every self-attention layer carries an
    :class:`~diffmem.adapters.attention.EditedAttnProcessor` whose ``head_mask`` is a gate vector of ones (in the
    model's dtype). Only the gates are differentiated: no parameter ``.grad`` is touched.
    """
    from diffmem.sampling.module_hooks import AttentionHooks

    param = next(model.parameters())
    gates = {n: _Gates(a.heads, torch.ones(a.heads, dtype=param.dtype, device=param.device))
             for n, a in self_attention_layers(model).items()}
    with AttentionHooks(model, head_masks={n: g.head_mask for n, g in gates.items()}):
        return accumulate_scores(batch_loss, gates, num_batches)


def random_model_heads(model: nn.Module, ratio: float = 0.2, seed: int = 0) -> list[Head]:
    """Table 1's random-pruning baseline: ⌊η·H⌋ self-attention heads of ``model`` drawn uniformly (by ``seed``)."""
    return random_heads(head_counts(model), ratio, seed=seed)


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


@torch.no_grad()
def remove_heads(model: nn.Module, heads: Iterable[Head]) -> None:
    """Delete ``heads`` from ``model``'s self-attention layers in place.

    Indices refer to the layers before this call; the remaining heads are renumbered 0..H'−1 in order. Kept head
    h owns channels h·d … h·d+d−1 of q, k, v and of the input of ``to_out[0]`` (d = head_dim).
    """
    layers = self_attention_layers(model)
    counts = {name: int(attn.heads) for name, attn in layers.items()}
    for name, idx in heads_by_layer(counts, heads).items():
        attn = layers[name]
        H, d = attn.heads, attn.inner_dim // attn.heads
        keep, channels = kept_channels(H, d, idx)
        attn.to_q = sliced_linear(attn.to_q, rows=channels)
        attn.to_k = sliced_linear(attn.to_k, rows=channels)
        attn.to_v = sliced_linear(attn.to_v, rows=channels)
        attn.to_out[0] = sliced_linear(attn.to_out[0], cols=channels)
        attn.heads = attn.sliceable_head_dim = len(keep)
        attn.inner_dim = attn.inner_kv_dim = len(keep) * d
        if len(keep) == 0:
            attn.set_processor(NoHeadsProcessor())


def save_pruned(model: nn.Module, heads: Iterable[Head], folder: str | Path, *, source: str | Path,
                pipeline: str, heads_before: dict[str, int], extra: dict | None = None) -> Path:
    """Write ``folder/transformer.safetensors`` (the pruned ``model``'s state dict) and ``folder/pruned_heads.json``
    (``source``: the original local pipeline directory, ``pipeline`` class, ``heads_before`` per layer, the removed
    heads as ``[[layer, index], …]`` with pre-removal indices, and ``extra`` provenance). Returns the JSON path."""
    folder = Path(folder)
    write_arrays(folder / WEIGHTS_FILE, dict(model.state_dict()))
    return write_json(folder / PRUNED_HEADS_FILE, {
        "source": str(Path(source).resolve()), "pipeline": pipeline, "heads_before": dict(heads_before),
        "removed": [[h.layer, h.index] for h in heads], "weights": WEIGHTS_FILE, **(extra or {})})


def load_pruned(folder: str | Path, *, source: str | Path | None = None, **load_kwargs):
    """A diffmem adapter (DiT or PixArt) of the pruned model saved in ``folder`` by :func:`save_pruned`.

    Rebuilds the pipeline from the original local directory (``source``, default the one recorded; never
    downloaded), checks it has the recorded head counts, removes the same heads, then loads the saved state dict
    (strict). ``load_kwargs`` go to the adapter's ``from_pretrained``.
    """
    import importlib

    folder = Path(folder)
    if not (folder / PRUNED_HEADS_FILE).is_file():
        raise ValueError(f"{folder / PRUNED_HEADS_FILE} not found; save a pruned model with save_pruned")
    info = read_json(folder / PRUNED_HEADS_FILE)
    if info.get("pipeline") not in _ADAPTERS:
        raise ValueError(f"{folder / PRUNED_HEADS_FILE} names pipeline {info.get('pipeline')!r}; "
                         f"expected one of {sorted(_ADAPTERS)}")
    module, cls = _ADAPTERS[info["pipeline"]].split(":")
    adapter = getattr(importlib.import_module(module), cls).from_pretrained(source or info["source"], **load_kwargs)
    found = head_counts(adapter.model)
    if found != info["heads_before"]:
        raise ValueError(f"{source or info['source']} has heads {found}, but the pruned model was made from "
                         f"{info['heads_before']}")
    remove_heads(adapter.model, [Head(layer, int(i)) for layer, i in info["removed"]])
    state = read_arrays(folder / info.get("weights", WEIGHTS_FILE))
    adapter.model.load_state_dict(state, strict=True)
    return adapter
