"""Stable Diffusion 1.x / 2.x behind the denoiser contract (Rombach et al., CVPR 2022).

Text prompts become CLIP embeddings exactly as ``StableDiffusionPipeline.encode_prompt`` builds them (padded to the
tokenizer's max length; the empty prompt for ε_u); the UNet's ε- or v-output is converted to ε once, in
:class:`~diffmem.denoiser.Denoiser`; both CFG branches share one batched forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffmem.adapters.diffusers_common import DiffusersAdapter
from diffmem.types import Cond

__all__ = ["StableDiffusionAdapter"]


def _prompts(prompts) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a string or a non-empty sequence of strings, got {prompts!r}")
    return prompts


class StableDiffusionAdapter(DiffusersAdapter):
    """A ``StableDiffusionPipeline`` (SD 1.x ε-prediction or SD 2.x v-prediction) as a :class:`~diffmem.Denoiser`.

    Example (``pipe`` a StableDiffusionPipeline, e.g. ``tests/diffusers_tiny.tiny_sd_pipeline()``):
        sd = StableDiffusionAdapter(pipe)          # or StableDiffusionAdapter.from_pretrained("/models/sd-v1-4")
        traj = sd.generate(sd.prompts(["a photo of a cat"]), seeds=[0], num_steps=50, guidance=7.5)
        images = sd.codec.decode(traj.x_0)
    """

    pipeline_classes = ("StableDiffusionPipeline",)
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    # the safety checker and its feature extractor play no part in denoising: not loaded
    load_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @property
    def model(self) -> torch.nn.Module:
        return self.pipeline.unet

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> Tensor:
        """CLIP embeddings [B, L, D] of ``prompts`` (L = the tokenizer's max length, 77 for SD)."""
        tok, enc = self.pipeline.tokenizer, self.pipeline.text_encoder
        ids = tok(_prompts(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")
        device = next(enc.parameters()).device
        # only some text encoders were trained with an attention mask (config flag), as in the pipeline
        mask = ids.attention_mask.to(device) if getattr(enc.config, "use_attention_mask", False) else None
        embeds = enc(ids.input_ids.to(device), attention_mask=mask)[0]
        return embeds.to(device=self.device, dtype=enc.dtype)

    def prompts(self, prompts: str | Sequence[str], negative: str | Sequence[str] = "") -> Cond:
        """Conditioning for ε_c (the prompts) and ε_u (``negative``, default the empty prompt, as SD samples)."""
        prompts = _prompts(prompts)
        negative = [negative] * len(prompts) if isinstance(negative, str) else _prompts(negative)
        if len(negative) != len(prompts):
            raise ValueError(f"got {len(negative)} negative prompts for {len(prompts)} prompts")
        return Cond(self.encode(prompts), self.encode(negative))

    def model_output(self, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        x, t = self._inputs(x_t, t)
        return self.model(x, t, encoder_hidden_states=c.to(x.dtype), return_dict=False)[0].to(x_t.dtype)
