"""The records that flow through the sampling loop: conditioning, predictions, per-step records.

Symbols follow ``docs/notation.md``: ``eps_c`` = ε_θ(x_t, t, c), ``eps_u`` = ε_θ(x_t, t, ∅), ``eps`` = the guided
prediction the solver used, ``x0_hat`` = the clean estimate implied by ``eps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["Cond", "Prediction", "StepRecord", "batch_size_of", "concat_cond", "index_cond"]


def batch_size_of(c: Any) -> int:
    """Leading dimension of a conditioning tensor or of the first tensor in a mapping."""
    if isinstance(c, Tensor):
        return c.shape[0]
    if isinstance(c, Mapping) and c:
        return batch_size_of(next(iter(c.values())))
    raise TypeError(f"conditioning must be a Tensor or a non-empty mapping of Tensors, got {type(c).__name__}")


def concat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditionings along the batch dimension (tensors or mappings of tensors)."""
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    return {k: concat_cond(a[k], b[k]) for k in a}


def index_cond(c: Any, idx) -> Any:
    """Select batch rows of a conditioning (tensors or mappings of tensors)."""
    if isinstance(c, Tensor):
        return c[idx]
    return {k: index_cond(v, idx) for k, v in c.items()}


@dataclass(frozen=True)
class Cond:
    """Conditioning for one batch: ``c`` for ε_c and ``null`` for ε_u (``None`` when the model is unguided).

    Each is a tensor with a leading batch dimension (class labels, text embeddings) or a mapping of such tensors
    (embeddings plus attention mask), so that both branches can be concatenated into one forward pass.
    """

    c: Any
    null: Any = None

    def __post_init__(self):
        n = batch_size_of(self.c)
        if self.null is not None and batch_size_of(self.null) != n:
            raise ValueError(f"null conditioning has batch size {batch_size_of(self.null)}, c has {n}")

    @property
    def batch_size(self) -> int:
        return batch_size_of(self.c)

    def select(self, idx) -> Cond:
        """Rows ``idx`` of both branches (used to split a run into batches)."""
        null = None if self.null is None else index_cond(self.null, idx)
        return replace(self, c=index_cond(self.c, idx), null=null)


@dataclass(frozen=True)
class Prediction:
    """Noise predictions at one (x_t, t), kept apart (Kim et al., 2025, §3: ε_c carries the training image).

    Attributes:
        eps_c: conditional prediction ε_θ(x_t, t, c), shape like x_t.
        eps_u: unconditional prediction ε_θ(x_t, t, ∅), or ``None`` when it was not evaluated.
        eps: the prediction the solver used (guided when a weight was applied; ``eps_c`` otherwise).
        x0_hat: clean estimate implied by ``eps``: (x_t − sqrt(1 − ᾱ_t) eps) / sqrt(ᾱ_t).
    """

    eps_c: Tensor
    eps_u: Tensor | None
    eps: Tensor
    x0_hat: Tensor


@dataclass(frozen=True)
class StepRecord:
    """What hooks see at step ``i``: the state entering the step and the (guided) prediction made there.

    ``w`` holds the guidance weight per sample (shape [B]); ``d_t`` is ‖ε_c − ε_u‖₂ per sample (Wen et al.,
    ICLR 2024), or ``None`` when ε_u was not evaluated. Hooks must treat the tensors as read-only.
    """

    i: int
    num_steps: int
    t: float
    alpha_bar_t: float
    alpha_bar_next: float
    sigma_t: float
    w: Tensor
    d_t: Tensor | None
    x_t: Tensor
    pred: Prediction
