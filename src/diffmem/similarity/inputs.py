"""Tensors from files for the copy criteria, checked at the boundary, and the memorization summary of two sets.

Ye et al. (2025, §7) count a sample as a copy when its nearest/second-nearest distance ratio is ≤ 1/3; here the
inputs of that rule are read and checked (file, key, non-empty, finite, same item shape) and the threshold must be
a finite number in (0, 1), so a summary is never computed on something other than what was asked.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from diffmem.io import read_arrays
from diffmem.similarity.criteria import nn_ratio, relative_distance

__all__ = ["load_tensor", "check_ratio_threshold", "memorization_summary"]


def load_tensor(path: str | os.PathLike, key: str | None = None) -> Tensor:
    """The tensor ``key`` (default: the only one) of a safetensors file, as a non-empty finite batch [N, ...]."""
    arrays = read_arrays(path)
    if key is None and len(arrays) != 1:
        raise ValueError(f"{path} holds {sorted(arrays)}; choose one with --key")
    if key is not None and key not in arrays:
        raise ValueError(f"{path} has no tensor {key!r}; it holds {sorted(arrays)}")
    x = arrays[key] if key is not None else next(iter(arrays.values()))
    if x.ndim < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{path}: the tensor must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16,
                                                                          torch.int32, torch.int64)):
        raise ValueError(f"{path}: the tensor must hold numbers, got dtype {x.dtype}")
    x = x if x.is_floating_point() else x.double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: the tensor contains NaN or inf; remove those items")
    return x


def check_ratio_threshold(threshold: float) -> float:
    """The copy-ratio threshold as a float in (0, 1); NaN, inf and anything outside are refused."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0 < threshold < 1:
        raise ValueError(f"ratio threshold must be a finite number in (0, 1) (default 1/3), got {threshold!r}")
    return float(threshold)


def memorization_summary(samples: Tensor, refs: Tensor, *, threshold: float = 1 / 3, k: int = 50,
                         dedup: bool = True, backend: str = "torch") -> dict:
    """The memorization ratio (share of samples with nn ratio ≤ ``threshold``), the median nn ratio and relative
    distance (k nearest, k capped at the number of references) and how many distinct references are copied."""
    threshold = check_ratio_threshold(threshold)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if samples.shape[1:] != refs.shape[1:]:
        raise ValueError(f"samples are {tuple(samples.shape[1:])} per item but references are "
                         f"{tuple(refs.shape[1:])}; pass tensors of the same item shape")
    ratio, nearest = nn_ratio(samples, refs, dedup=dedup, backend=backend)
    if not bool(torch.isfinite(ratio).all()):
        raise ValueError("distances between samples and references overflow (values too large); rescale both sets")
    kk = min(k, len(refs))
    rel, _ = relative_distance(samples, refs, k=kk, dedup=dedup, backend=backend)
    copy = ratio <= threshold
    return {"n_samples": len(samples), "n_refs": len(refs), "dedup": dedup, "ratio_threshold": threshold,
            "memorization_ratio": float(copy.double().mean()), "nn_ratio_median": float(ratio.median()),
            "relative_distance_k": kk, "relative_distance_median": float(rel.median()),
            "distinct_nearest_refs": int(nearest[copy].unique().numel())}
