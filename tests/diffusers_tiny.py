"""Tiny random diffusers pipelines built offline, for parity tests and benchmarks (CPU, fp32, milliseconds).

Everything is built from configs with a fixed torch seed: no file is read and nothing is downloaded. The text side
uses a byte-level BPE vocabulary written here (CLIP) or a small Unigram vocabulary (T5), passed as Python objects
because transformers 5.x ignores ``CLIPTokenizer(vocab_file=..., merges_file=...)`` (environment spec, trap 1).
Models built from configs start in train mode; every builder returns them in eval mode (trap 3).

Random ε-networks do not denoise: their ε̂ is uncorrelated with x_t, so x̂₀ ≈ x_t / √ᾱ_T at the first step and the
final latents reach tens (SD's scaled-linear betas) or hundreds (DiT's linear betas) instead of O(1); fp32 rounding
then scales with them. v-prediction networks stay O(1) (x̂₀ = √ᾱ x_t − √(1−ᾱ) v is bounded), and so do ε-networks
under :data:`MILD_BETAS` (ᾱ_T ≈ 0.35).

Builders: :func:`tiny_sd_pipeline` (SD 1.x, ε), :func:`tiny_sd2_pipeline` (SD 2.x-style, v-prediction, linear
projections), :func:`tiny_dit_pipeline` (class-conditional DiT with learned σ), :func:`tiny_pixart_pipeline`
(PixArt-α: T5 captions, cross-attention DiT) and :func:`make_scheduler` (DDIM / DDPM / Euler from one config).
"""

from __future__ import annotations

import pytest
import torch

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
DIT_BETAS = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}
MILD_BETAS = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.002}
SCHEDULERS = ("ddim", "ddpm", "euler")
TEXT_DIM = 32


def assert_parity(x, ref, rtol: float = 1e-5) -> None:
    """max |x − ref| ≤ rtol · max(1, max |ref|): absolute on O(1) latents, relative beyond, as fp32 rounding is."""
    err, scale = (x - ref).abs().max().item(), max(1.0, ref.abs().max().item())
    assert err <= rtol * scale, f"max |ours - stock| = {err:.3g} for latents up to {scale:.3g}"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and with 2 OpenMP threads on 2 shared cores a 10-step call was seen
    to take 20 s instead of 0.05 s (threads spin-waiting on each other). Import this fixture into a test module to
    run its tests single-threaded; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_scheduler(kind: str = "ddim", *, prediction_type: str = "epsilon", betas: dict | None = None, **config):
    """A diffusers scheduler of ``kind`` with the checkpoint-style options SD ships (no clipping, offset 1)."""
    import diffusers

    base = {**(betas or SD_BETAS), "prediction_type": prediction_type, "num_train_timesteps": 1000}
    if kind == "ddim":
        return diffusers.DDIMScheduler(**{"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                                          **base, **config})
    if kind == "ddpm":
        return diffusers.DDPMScheduler(**{"clip_sample": False, "steps_offset": 1, **base, **config})
    if kind == "euler":
        return diffusers.EulerDiscreteScheduler(**{"steps_offset": 1, **base, **config})
    raise ValueError(f"unknown scheduler kind {kind!r}; expected one of {SCHEDULERS}")


# --- text side ----------------------------------------------------------------------------------------------------

def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spare = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(spare)) for b in range(256)]


TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "f</w>"), ("c", "a"), ("ca", "t</w>"),
               ("d", "o"), ("do", "g</w>")]


def tiny_clip_tokenizer(max_length: int = 77):
    """Byte-level CLIP tokenizer: 256 byte symbols, the same with ``</w>``, a few merges, start/end tokens."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(TINY_MERGES), model_max_length=max_length)


def tiny_clip_text_encoder(tokenizer, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config).eval()


def tiny_t5(seed: int = 0):
    """A Unigram T5 tokenizer over letters and a few words, and a 2-layer T5 encoder."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(w, -3.0) for w in ("▁a", "▁the", "▁cat", "▁dog", "▁photo", "▁of")]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, T5EncoderModel(config).eval()


# --- image side ---------------------------------------------------------------------------------------------------

def tiny_vae(seed: int = 0):
    """2-level AutoencoderKL: 16 px images <-> 4x8x8 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=32, sample_size=16).eval()


def tiny_unet(seed: int = 0, *, sd2: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    sd2_style = {"use_linear_projection": True, "attention_head_dim": (2, 4)} if sd2 else {"attention_head_dim": 8}
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                norm_num_groups=32, **sd2_style).eval()


def tiny_sd_pipeline(scheduler: str = "ddim", *, prediction_type: str = "epsilon", seed: int = 0,
                     sd2: bool = False, betas: dict | None = None, **scheduler_config):
    """A StableDiffusionPipeline of tiny random parts (UNet, CLIP text encoder, VAE) with the given scheduler."""
    from diffusers import StableDiffusionPipeline

    tokenizer = tiny_clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed), text_encoder=tiny_clip_text_encoder(tokenizer, seed), tokenizer=tokenizer,
        unet=tiny_unet(seed, sd2=sd2),
        scheduler=make_scheduler(scheduler, prediction_type=prediction_type, betas=betas, **scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd2_pipeline(scheduler: str = "ddim", *, seed: int = 0, **scheduler_config):
    """SD 2.x-style: v-prediction scheduler, linear projections and per-block head dims in the UNet."""
    return tiny_sd_pipeline(scheduler, prediction_type="v_prediction", seed=seed, sd2=True, **scheduler_config)


def tiny_dit_pipeline(scheduler: str = "ddim", *, seed: int = 0, learned_sigma: bool = True, betas: dict = DIT_BETAS,
                      **scheduler_config):
    """DiTPipeline with a 2-layer DiT (patch 2, 8x8 latents). ``num_embeds_ada_norm=1000`` because DiTPipeline
    hard-codes the null class 1000 (trap 2); ``learned_sigma`` doubles the output channels as DiT-XL/2 does."""
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                        out_channels=8 if learned_sigma else 4, num_layers=2, sample_size=8,
                                        patch_size=2, num_embeds_ada_norm=1000).eval()
    _perturb(transformer, seed)
    sched = make_scheduler(scheduler, betas=betas, **{"steps_offset": 0, **scheduler_config})
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(seed), scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(scheduler: str = "ddim", *, seed: int = 0, betas: dict = DIT_BETAS, **scheduler_config):
    """PixArtAlphaPipeline with a 2-layer caption cross-attention transformer and a tiny T5 encoder."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer, text_encoder = tiny_t5(seed)
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                           out_channels=8, num_layers=2, cross_attention_dim=16,
                                           caption_channels=TEXT_DIM, sample_size=8, patch_size=2).eval()
    _perturb(transformer, seed)
    sched = make_scheduler(scheduler, betas=betas, **{"steps_offset": 0, **scheduler_config})
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=tiny_vae(seed),
                               transformer=transformer, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _perturb(model, seed: int, scale: float = 0.05) -> None:
    """Add small noise to every parameter: diffusers zero-initializes DiT/PixArt output and modulation layers, which
    would make ε ≡ 0 and any parity check vacuous."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))

