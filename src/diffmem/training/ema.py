"""Exponential moving average of model weights (Polyak averaging; the sampling weights of DiT and EDM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """Shadow copies of a module's state: parameters are averaged, buffers copied.

    ``update(net, step)`` moves the shadow parameters towards the live ones with decay min(``decay``,
    (1 + step)/(10 + step)): the warm-up keeps the first steps' random initialization from dominating a short run.
    Buffers (e.g. attention ``head_mask`` gates set by pruning) are copied, never averaged, so a pruned head stays
    pruned in the EMA weights.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> ema = EMA(net, decay=0.5)
        >>> _ = net.weight.data.add_(1.0); ema.update(net, step=10**6)
        >>> bool(torch.allclose(ema.state_dict()["weight"], net.weight - 0.5))
        True
    """

    def __init__(self, net: nn.Module, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        params = {k for k, _ in net.named_parameters()}
        for k, v in net.state_dict().items():
            if k in params:
                self.shadow[k].lerp_(v, 1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model: differing keys {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    def copy_to(self, net: nn.Module) -> None:
        """Load the averaged weights into ``net``."""
        net.load_state_dict(self.shadow)
