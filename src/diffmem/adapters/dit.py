"""Class-conditional DiT behind the denoiser contract (Peebles & Xie, ICCV 2023).

ε_u uses the null class, the extra row of DiT's label-embedding table (id = ``num_embeds_ada_norm``; DiTPipeline
hard-codes 1000). DiT-XL/2 also predicts a per-pixel variance (learned σ, Nichol & Dhariwal, 2021) in channels
C..2C−1; the solvers use only ε, so those channels are split off here, explicitly, before any guidance — and the
guidance then acts on *all* C latent channels (the original DiT code guided only the first 3).

Parity with ``DiTPipeline`` holds for DDIM (tested). Two pipeline limits, not the adapter's: it passes no generator
to ``scheduler.step``, so DDPM noise comes from torch's global RNG (no per-seed mapping exists), and it feeds the
output of ``scale_model_input`` back into ``step``, so with Euler it does not sample correctly; the adapter samples
DDPM and Euler the way the SD and PixArt pipelines do (``scheduler_map``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffmem.adapters.diffusers_common import DiffusersAdapter
from diffmem.types import Cond

__all__ = ["DiTAdapter", "split_learned_sigma"]


def split_learned_sigma(out: Tensor, channels: int) -> Tensor:
    """The ε part of a network output [B, C or 2C, ...] with ``channels`` = C latent channels."""
    if out.shape[1] == channels:
        return out
    if out.shape[1] == 2 * channels:
        return out[:, :channels]
    raise ValueError(f"model output has {out.shape[1]} channels; expected {channels} or {2 * channels} "
                     "(ε, or ε plus learned σ)")


class DiTAdapter(DiffusersAdapter):
    """A ``DiTPipeline`` as a :class:`~diffmem.Denoiser`; conditioning is a tensor of class ids.

    Example (``pipe`` a DiTPipeline, e.g. ``tests/diffusers_tiny.tiny_dit_pipeline()``):
        dit = DiTAdapter(pipe)
        traj = dit.generate(dit.labels([207, 360]), seeds=[0, 1], num_steps=50, guidance=4.0)
    """

    pipeline_classes = ("DiTPipeline",)
    components = ("transformer", "vae", "scheduler")

    def __init__(self, pipeline, **kwargs):
        super().__init__(pipeline, **kwargs)
        config = self.model.config
        self.num_classes = int(config.num_embeds_ada_norm)
        self.learned_sigma = config.out_channels == 2 * config.in_channels
        if config.out_channels not in (config.in_channels, 2 * config.in_channels):
            raise ValueError(f"DiT out_channels={config.out_channels} is neither in_channels={config.in_channels} "
                             "nor twice it")

    @property
    def model(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def null_class(self) -> int:
        """Label id of the unconditional branch: the row after the last class."""
        return self.num_classes

    def labels(self, class_ids: Sequence[int] | Tensor) -> Cond:
        """Conditioning for ε_c (``class_ids``) and ε_u (the null class)."""
        c = torch.as_tensor(class_ids, dtype=torch.long, device=self.device).reshape(-1)
        bad = c[(c < 0) | (c >= self.num_classes)]
        if len(c) == 0 or len(bad):
            raise ValueError(f"class ids must be a non-empty list in [0, {self.num_classes}), got "
                             f"{bad.tolist() or list(class_ids)}")
        return Cond(c, torch.full_like(c, self.null_class))

    def model_output(self, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        x, t = self._inputs(x_t, t)
        out = self.model(x, timestep=t, class_labels=c.to(self.device), return_dict=False)[0]
        return split_learned_sigma(out, x.shape[1]).to(x_t.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "null_class": self.null_class, "learned_sigma": self.learned_sigma}
