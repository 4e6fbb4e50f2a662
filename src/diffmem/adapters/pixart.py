"""PixArt-α/Σ (a caption cross-attention DiT) behind the denoiser contract (Chen et al., ICLR 2024).

Captions are lower-cased and stripped, tokenized to ``max_sequence_length`` (120 for PixArt-α) and encoded by T5
with their attention mask; both embeddings and mask travel in the conditioning, since the transformer masks the
padding keys. ε_u uses the empty caption, encoded the same way. Learned-σ channels are split off explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffmem.adapters.diffusers_common import DiffusersAdapter
from diffmem.adapters.diffusers_sd import _prompts
from diffmem.adapters.dit import split_learned_sigma
from diffmem.types import Cond

__all__ = ["PixArtAdapter"]


class PixArtAdapter(DiffusersAdapter):
    """A ``PixArtAlphaPipeline`` or ``PixArtSigmaPipeline`` as a :class:`~diffmem.Denoiser`.

    Conditioning is a mapping ``{"embeds": [B, L, D], "mask": [B, L]}``. The pipeline's optional caption
    cleaning (``clean_caption=True``, which needs bs4 and ftfy) is not reproduced: call the pipeline with
    ``clean_caption=False`` to compare.

    Example (``pipe`` e.g. ``tests/diffusers_tiny.tiny_pixart_pipeline()``):
        pixart = PixArtAdapter(pipe)
        traj = pixart.generate(pixart.prompts(["a photo of a cat"]), seeds=[0], num_steps=20, guidance=4.5)
    """

    pipeline_classes = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")

    def __init__(self, pipeline, *, max_sequence_length: int | None = None, **kwargs):
        super().__init__(pipeline, **kwargs)
        default = 300 if type(pipeline).__name__ == "PixArtSigmaPipeline" else 120  # the pipelines' defaults
        self.max_sequence_length = max_sequence_length or default

    @property
    def model(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> dict[str, Tensor]:
        """T5 embeddings [B, L, D] and attention mask [B, L] of ``prompts``."""
        tok, enc = self.pipeline.tokenizer, self.pipeline.text_encoder
        text = [p.lower().strip() for p in _prompts(prompts)]
        ids = tok(text, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                  add_special_tokens=True, return_tensors="pt")
        device = next(enc.parameters()).device
        mask = ids.attention_mask.to(device)
        embeds = enc(ids.input_ids.to(device), attention_mask=mask)[0]
        return {"embeds": embeds.to(device=self.device, dtype=enc.dtype), "mask": mask.to(self.device)}

    def prompts(self, prompts: str | Sequence[str], negative: str = "") -> Cond:
        """Conditioning for ε_c (the captions) and ε_u (``negative``, default the empty caption)."""
        prompts = _prompts(prompts)
        return Cond(self.encode(prompts), self.encode([negative] * len(prompts)))

    def _added_cond(self, x: Tensor) -> dict:
        # PixArt-α 1024 conditions on the image size in pixels and its aspect ratio; the others ignore them
        if not getattr(self.model, "use_additional_conditions", False):
            return {"resolution": None, "aspect_ratio": None}
        h, w = (s * self.codec.downsample for s in x.shape[-2:])
        B = x.shape[0]
        return {"resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).repeat(B, 1),
                "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).repeat(B, 1)}

    def model_output(self, x_t: Tensor, t: Tensor, c: dict) -> Tensor:
        x, t = self._inputs(x_t, t)
        out = self.model(x, encoder_hidden_states=c["embeds"].to(x.dtype), encoder_attention_mask=c["mask"],
                         timestep=t, added_cond_kwargs=self._added_cond(x), return_dict=False)[0]
        return split_learned_sigma(out, x.shape[1]).to(x_t.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "max_sequence_length": self.max_sequence_length}
