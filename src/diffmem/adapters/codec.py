"""The VAE codec between images and the latents the denoisers work in (Rombach et al., CVPR 2022, §3).

Latents are ``z = (E(x) − shift) · scaling_factor``; images are ``D(z / scaling_factor + shift)``. The scaling
factor (0.18215 for SD 1.x/2.x) gives the latents roughly unit variance, so the VP state and its ᾱ_t refer to them
and not to the raw VAE output. ``shift`` is 0 unless the VAE config has a ``shift_factor``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["LatentCodec"]


class LatentCodec:
    """Encode images in [−1, 1] to scaled latents and decode them back, with a diffusers ``AutoencoderKL``.

    Args:
        vae: the pipeline's VAE (``pipeline.vae``).

    Example (``pipe`` a diffusers pipeline):
        codec = LatentCodec(pipe.vae)
        x0 = codec.encode(images)          # [B, 3, H, W] in [-1, 1] -> [B, 4, H/8, W/8]
        images = codec.decode(x0)          # back, in (about) [-1, 1]
    """

    def __init__(self, vae):
        self.vae = vae.eval()
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def _param(self) -> Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, images: Tensor, *, mode: Literal["mean", "sample"] = "mean",
               generator: torch.Generator | list[torch.Generator] | None = None) -> Tensor:
        """Scaled latents of ``images`` [B, C, H, W] in [−1, 1]; ``mode="mean"`` is deterministic (the posterior
        mean), ``"sample"`` draws from the posterior with ``generator``."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {getattr(images, 'shape', type(images))}")
        if mode not in ("mean", "sample"):
            raise ValueError(f"unknown encode mode {mode!r}; expected 'mean' or 'sample'")
        p = self._param()
        dist = self.vae.encode(images.to(device=p.device, dtype=p.dtype)).latent_dist
        z = dist.mean if mode == "mean" else dist.sample(generator)
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images [B, C, H, W] (about [−1, 1], unclamped) from scaled latents [B, c, h, w]."""
        if not isinstance(latents, Tensor) or latents.ndim != 4:
            raise ValueError(f"latents must be a [B, c, h, w] tensor, got {getattr(latents, 'shape', type(latents))}")
        p = self._param()
        z = latents.to(device=p.device, dtype=p.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.to(latents.dtype)

    @staticmethod
    def to_unit(images: Tensor) -> Tensor:
        """[−1, 1] images to [0, 1], clamped, as the pipelines' image post-processing does."""
        return (images / 2 + 0.5).clamp(0, 1)

    def describe(self) -> dict:
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "downsample": self.downsample, "latent_channels": self.latent_channels}
