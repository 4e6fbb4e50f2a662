"""Saving and reloading head-pruned diffusers DiT and PixArt transformers (Ye et al., 2025, Algorithm 1).

A pruned model is saved as its state dict (safetensors) plus ``pruned_heads.json`` (the original local directory,
the pipeline class, the head counts before pruning and the removed heads), and rebuilt from the original directory
by :func:`load_pruned`: the same heads are removed physically (:meth:`diffmem.attention.AttentionModel.remove_heads`)
before the saved weights are loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn

from diffmem.adapters.subject_data import ADAPTERS
from diffmem.attention import Head, attention
from diffmem.io import read_arrays, read_json, write_arrays, write_json

__all__ = ["save_pruned", "load_pruned", "PRUNED_HEADS_FILE", "WEIGHTS_FILE"]

PRUNED_HEADS_FILE = "pruned_heads.json"
WEIGHTS_FILE = "transformer.safetensors"


def save_pruned(model: nn.Module, heads: Iterable[Head], folder: str | Path, *, source: str | Path | None,
                pipeline: str, heads_before: dict[str, int], extra: dict | None = None) -> Path:
    """Write ``folder/transformer.safetensors`` (the pruned ``model``'s state dict) and ``folder/pruned_heads.json``
    (``source``: the original local pipeline directory, None for an in-memory pipeline; ``pipeline`` class,
    ``heads_before`` per layer, the removed heads as ``[[layer, index], …]`` with pre-removal indices, and ``extra``
    provenance). Returns the JSON path."""
    folder = Path(folder)
    write_arrays(folder / WEIGHTS_FILE, dict(model.state_dict()))
    return write_json(folder / PRUNED_HEADS_FILE, {
        "source": None if source is None else str(Path(source).resolve()), "pipeline": pipeline,
        "heads_before": dict(heads_before), "removed": [[h.layer, h.index] for h in heads], "weights": WEIGHTS_FILE,
        **(extra or {})})


def load_pruned(folder: str | Path, *, source: str | Path | None = None, **load_kwargs):
    """A diffmem adapter (DiT or PixArt) of the pruned model saved in ``folder`` by :func:`save_pruned`.

    Rebuilds the pipeline from the original local directory (``source``, default the one recorded; never
    downloaded), checks it has the recorded head counts, removes the same heads, then loads the saved state dict
    (strict). ``load_kwargs`` go to the adapter's ``from_pretrained``.
    """
    folder = Path(folder)
    if not (folder / PRUNED_HEADS_FILE).is_file():
        raise ValueError(f"{folder / PRUNED_HEADS_FILE} not found; save a pruned model with save_pruned")
    info = read_json(folder / PRUNED_HEADS_FILE)
    source = source or info["source"]
    if source is None:
        raise ValueError(f"{folder / PRUNED_HEADS_FILE} records no source directory; pass source=")
    if info.get("pipeline") not in ADAPTERS:
        raise ValueError(f"{folder / PRUNED_HEADS_FILE} names pipeline {info.get('pipeline')!r}; "
                         f"expected one of {sorted(ADAPTERS)}")
    adapter = ADAPTERS[info["pipeline"]].from_pretrained(source, **load_kwargs)
    att = attention(adapter.model)
    found = att.head_counts()
    if found != info["heads_before"]:
        raise ValueError(f"{source} has heads {found}, but the pruned model was made from "
                         f"{info['heads_before']}")
    att.remove_heads([Head(layer, int(i)) for layer, i in info["removed"]])
    adapter.model.load_state_dict(read_arrays(folder / info.get("weights", WEIGHTS_FILE)), strict=True)
    return adapter
