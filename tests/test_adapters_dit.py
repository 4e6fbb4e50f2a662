"""DiT and PixArt adapters against DiTPipeline / PixArtAlphaPipeline (tiny random parts, CPU, fp32).

Same tolerance as tests/test_adapters_sd.py (``diffusers_tiny.assert_parity``): max |ours − stock| ≤
1e-5 · max(1, max |stock|). DiTPipeline has no ``output_type="latent"``: its final latents are read where it hands
them to ``vae.decode``.
"""

from unittest import mock

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffmem.adapters.dit import DiTAdapter, split_learned_sigma  # noqa: E402
from diffmem.adapters.pixart import PixArtAdapter  # noqa: E402
from diffusers_tiny import (  # noqa: E402, F401
    assert_parity,
    make_scheduler,
    one_thread,
    tiny_dit_pipeline,
    tiny_pixart_pipeline,
)

SEEDS, LABELS, STEPS = [0, 1], [3, 7], 10


def dit_stock(pipe, w, labels=LABELS, seeds=SEEDS, steps=STEPS):
    """Final latents of DiTPipeline: (what it passes to vae.decode) · scaling_factor."""
    seen = {}
    decode = pipe.vae.decode

    def spy(z, *args, **kwargs):
        seen["z"] = z
        return decode(z, *args, **kwargs)

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with mock.patch.object(pipe.vae, "decode", spy):
        pipe(class_labels=labels, guidance_scale=w, generator=gens, num_inference_steps=steps, output_type="pt")
    return seen["z"] * pipe.vae.config.scaling_factor


@pytest.fixture(scope="module")
def dit():
    return tiny_dit_pipeline()


@pytest.mark.parametrize("w", [4.0, 1.0])
def test_dit_ddim_parity(dit, w):
    dit.scheduler = make_scheduler("ddim", betas={"beta_schedule": "linear"}, steps_offset=0)
    adapter = DiTAdapter(dit)
    tr = adapter.generate(adapter.labels(LABELS), SEEDS, STEPS, guidance=w)
    ref = dit_stock(dit, w)
    assert_parity(tr.x_0, ref)
    assert (ref[0] - ref[1]).abs().max() > 1e-2  # not vacuous
    assert bool(tr.eps_u.isnan().all()) == (w == 1.0)


def test_dit_labels_null_class_and_learned_sigma(dit):
    adapter = DiTAdapter(dit)
    cond = adapter.labels([1, 999])
    assert cond.c.tolist() == [1, 999] and cond.null.tolist() == [1000, 1000]  # DiTPipeline's hard-coded null id
    embedder = dit.transformer.transformer_blocks[0].norm1.emb.class_embedder
    assert embedder.embedding_table.num_embeddings == adapter.null_class + 1  # the null row exists
    with pytest.raises(ValueError, match=r"\[1000\]"):
        adapter.labels([3, 1000])
    assert adapter.learned_sigma and adapter.describe()["learned_sigma"] is True
    out = torch.arange(2 * 8 * 2 * 2.0).view(2, 8, 2, 2)
    assert torch.equal(split_learned_sigma(out, 4), out[:, :4])
    with pytest.raises(ValueError, match="3 channels"):
        split_learned_sigma(out[:, :3], 4)
    plain = DiTAdapter(tiny_dit_pipeline(learned_sigma=False))
    assert not plain.learned_sigma


def test_dit_adapter_puts_models_in_eval_mode():
    # built from a config, DiT is in train mode and drops class labels at random (environment spec, trap 3)
    pipe = tiny_dit_pipeline()
    pipe.transformer.train()
    adapter = DiTAdapter(pipe)
    assert not pipe.transformer.training
    x = torch.randn(2, 4, 8, 8)
    a, b = adapter(x, 500.0, adapter.labels([3, 3])), adapter(x, 500.0, adapter.labels([3, 3]))
    assert torch.equal(a.eps_c, b.eps_c)


def test_dit_save_pretrained_round_trip(tmp_path, dit):
    dit.scheduler = make_scheduler("ddim", betas={"beta_schedule": "linear"}, steps_offset=0)
    dit.save_pretrained(tmp_path)  # id2label is not saved (trap 4); the adapter needs none
    loaded = DiTAdapter.from_pretrained(tmp_path)
    tr = loaded.generate(loaded.labels(LABELS), SEEDS, STEPS, guidance=4.0)
    assert_parity(tr.x_0, dit_stock(dit, 4.0))
    assert tr.provenance.model["null_class"] == 1000


# --- PixArt -----------------------------------------------------------------------------------------------------

CAPTIONS = ["A cat ", "the dog"]  # upper case and trailing space: the pipeline lower-cases and strips


@pytest.fixture(scope="module")
def pixart():
    return tiny_pixart_pipeline()


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "euler"])
def test_pixart_parity(pixart, kind):
    pixart.scheduler = make_scheduler(kind, betas={"beta_schedule": "linear"}, steps_offset=0)
    adapter = PixArtAdapter(pixart)
    tr = adapter.generate(adapter.prompts(CAPTIONS), SEEDS, STEPS, guidance=4.5)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    ref = pixart(CAPTIONS, num_inference_steps=STEPS, guidance_scale=4.5, generator=gens, output_type="latent",
                 use_resolution_binning=False, clean_caption=False).images
    assert_parity(tr.x_0, ref)


def test_pixart_conditioning_carries_the_padding_mask(pixart):
    adapter = PixArtAdapter(pixart)
    cond = adapter.prompts(CAPTIONS)
    with torch.no_grad():  # as inside the pipeline call (T5's attention kernel differs with autograd on)
        embeds, mask, null_embeds, null_mask = pixart.encode_prompt(CAPTIONS, True, device=torch.device("cpu"),
                                                                    clean_caption=False)
    assert torch.equal(cond.c["embeds"], embeds) and torch.equal(cond.c["mask"], mask)
    assert torch.equal(cond.null["embeds"], null_embeds) and torch.equal(cond.null["mask"], null_mask)
    assert cond.c["mask"].shape == (2, 120) and cond.null["mask"].sum(1).tolist() == [1, 1]  # "" = just </s>
