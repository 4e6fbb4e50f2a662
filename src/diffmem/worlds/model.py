"""A world's trainable model (text encoder + DiT) and its place behind the denoiser contract.

The conditioning that reaches the denoiser is what the papers act on: for text worlds the text-encoder *output*
e_p as ``{"emb": [B, L, D], "mask": [B, L] bool}`` (the empty prompt's encoding is the null branch ε_u); for class
worlds the label ids, with the null class ``num_classes`` for ε_u.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from diffmem.denoiser import Denoiser
from diffmem.nets.dit import DiT, DiTConfig
from diffmem.schedules import NoiseSchedule
from diffmem.text.encoder import TextEncoder
from diffmem.text.tokenizer import WordTokenizer
from diffmem.worlds.config import ModelConfig
from diffmem.worlds.data import WorldData

__all__ = ["WorldNet", "WorldDenoiser", "dit_config"]


def dit_config(model: ModelConfig, data: WorldData) -> DiTConfig:
    """The DiT shape for a world's data: image size and channels from the images, classes or text width."""
    C, H, W = data.shape
    if H != W:
        raise ValueError(f"world images must be square, got {H}×{W}")
    patch = model.patch or max(1, H // 4)
    classes = len(data.class_names) if data.conditioning == "class" else 0
    return DiTConfig(image_size=H, channels=C, patch=patch, width=model.width, depth=model.depth, heads=model.heads,
                     mlp_ratio=model.mlp_ratio, num_classes=classes,
                     context_dim=model.width if data.conditioning == "text" else 0)


class WorldNet(nn.Module):
    """``text_encoder`` (text worlds only) + ``dit``; one state dict, one safetensors file.

    Module paths for hooks and pruning: ``dit.blocks.{i}.attn`` (self-attention), ``dit.blocks.{i}.cross``
    (cross-attention to the prompt tokens), ``text_encoder.blocks.{i}.attn``.
    """

    def __init__(self, dit: DiTConfig, tokenizer: WordTokenizer | None = None, text_depth: int = 2,
                 text_heads: int = 4):
        super().__init__()
        self.dit = DiT(dit)
        self.text_encoder = None
        if dit.context_dim:
            if tokenizer is None:
                raise ValueError("a text-conditional WorldNet needs a tokenizer")
            self.text_encoder = TextEncoder(tokenizer.vocab_size, tokenizer.max_len, dit.context_dim, text_depth,
                                            text_heads)

    def condition(self, cond_ids: Tensor) -> Any:
        """Token ids [B, L] → ``{"emb": e_p, "mask"}`` (text worlds); class ids pass through."""
        if self.text_encoder is None:
            return cond_ids
        return {"emb": self.text_encoder(cond_ids), "mask": cond_ids != WordTokenizer.pad_id}

    def forward(self, x_t: Tensor, t: Tensor, c: Any) -> Tensor:
        """ε prediction [B, C, H, W] for a conditioning made by :meth:`condition` (or edited from it)."""
        if isinstance(c, Mapping):
            return self.dit(x_t, t, context=c["emb"].to(x_t.dtype), mask=c["mask"])
        return self.dit(x_t, t, labels=c)


class WorldDenoiser(Denoiser):
    """A trained :class:`WorldNet` behind the contract (ε-prediction on the DDPM schedule it was trained with).

    ``net`` is the live module: hooks on ``net.dit.blocks[i].attn.probs`` and edits of ``head_mask`` act on the
    next call."""

    prediction_type = "epsilon"

    def __init__(self, net: WorldNet, schedule: NoiseSchedule, name: str, info: dict | None = None):
        self.net, self.schedule, self.name, self.info = net, schedule, name, dict(info or {})

    def model_output(self, x_t: Tensor, t: Tensor, c: Any) -> Tensor:
        return self.net(x_t, t, c)

    def describe(self) -> dict:
        return {**super().describe(), **self.info}
