"""Tolerances for comparing two computation orders of the same quantity (batched vs single, fused vs explicit,
removed vs masked): a number of ulps of the largest magnitude involved, so the check holds on any CPU's kernels
(Intel and AMD sum in different orders) and any thread count, whatever the dtype."""

from __future__ import annotations

import torch
from torch import Tensor


def order_atol(*refs: Tensor, ulps: float = 100) -> float:
    """``ulps`` units of round-off (eps of the dtype) times the largest |value| of ``refs`` (at least 1)."""
    scale = max([1.0, *(r.detach().abs().max().item() for r in refs)])
    return ulps * torch.finfo(refs[0].dtype).eps * scale
