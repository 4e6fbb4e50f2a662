"""Per-sample random streams: sample i depends only on seed i, whatever the batch size or device.

One CPU ``torch.Generator`` per seed (as EDM's StackedRandomGenerator); every draw is made per sample on the CPU
and then moved, so the numbers do not depend on the device. The initial noise x_T is the first draw of each
stream and sampler noise follows, matching diffusers pipelines called with a list of generators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SeededNoise", "check_seeds"]


def check_seeds(seeds) -> list[int]:
    """Validate a sequence of non-negative int seeds and return it as a list."""
    if isinstance(seeds, (int, str)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative ints, got {bad[0]!r}")
    return list(seeds)


class SeededNoise:
    """Independent standard-normal streams, one per seed.

    Example:
        >>> a = SeededNoise([0, 1, 2]).randn((4,))
        >>> b = SeededNoise([1]).randn((4,))
        >>> bool((a[1] == b[0]).all())
        True
    """

    def __init__(self, seeds: Sequence[int], *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.seeds = check_seeds(seeds)
        self.device, self.dtype = torch.device(device), dtype
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape: Sequence[int]) -> Tensor:
        """One draw of ``shape`` per stream, stacked to [B, *shape]."""
        draws = [torch.randn(tuple(shape), generator=g, dtype=self.dtype) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def randn_like(self, x: Tensor) -> Tensor:
        """A draw shaped like ``x`` (whose first dimension must be the number of streams)."""
        if x.shape[0] != len(self):
            raise ValueError(f"tensor batch {x.shape[0]} != number of seeds {len(self)}")
        return self.randn(x.shape[1:]).to(device=x.device, dtype=x.dtype)
