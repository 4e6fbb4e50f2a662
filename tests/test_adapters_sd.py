"""Stable Diffusion adapter: our loop + adapter reproduce StableDiffusionPipeline (tiny random parts, CPU, fp32).

Tolerance. The two sides do the same algebra in a different order (diffmem's solvers use float64 coefficients on
fp32 states; diffusers uses fp32 throughout), so they differ by rounding, and fp32 rounding is relative: we require
max |ours − stock| ≤ 1e-5 · max(1, max |stock|), i.e. 1e-5 absolute on O(1) latents as trained models give. Random
ε-UNets under SD's betas give latents of ~30 (see diffusers_tiny), v-prediction and MILD_BETAS give O(1-5). The
first UNet call is bitwise the same on both sides; the steps then differ by an ulp or so, which the random UNet
amplifies over the run.
"""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffmem import SeededNoise  # noqa: E402
from diffmem.adapters.diffusers_sd import StableDiffusionAdapter  # noqa: E402
from diffusers_tiny import (  # noqa: E402, F401
    MILD_BETAS,
    SD_BETAS,
    assert_parity,
    make_scheduler,
    one_thread,
    tiny_sd2_pipeline,
    tiny_sd_pipeline,
)

SEEDS, PROMPTS, STEPS = [0, 1], ["a cat", "the dog"], 10


def stock(pipe, w, steps=STEPS, seeds=SEEDS, prompts=PROMPTS, **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, num_inference_steps=steps, guidance_scale=w, generator=gens, output_type="latent",
                **kw).images


def ours(pipe, w, steps=STEPS, seeds=SEEDS, prompts=PROMPTS, **kw):
    sd = StableDiffusionAdapter(pipe)
    return sd.generate(sd.prompts(prompts), seeds, steps, guidance=w, **kw)


@pytest.fixture(scope="module")
def pipes():
    return {"epsilon": tiny_sd_pipeline(), "v_prediction": tiny_sd2_pipeline()}


SCHEDULERS = [("ddim", {}), ("ddim", {"timestep_spacing": "trailing"}), ("ddpm", {}), ("euler", {}),
              ("euler", {"timestep_spacing": "leading"}), ("euler", {"timestep_spacing": "trailing"})]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("kind,config", SCHEDULERS)
def test_parity_with_pipeline(pipes, prediction_type, kind, config):
    pipe = pipes[prediction_type]
    pipe.scheduler = make_scheduler(kind, prediction_type=prediction_type, **config)
    tr = ours(pipe, 7.5)
    assert_parity(tr.x_0, stock(pipe, 7.5))
    assert tr.provenance.solver["name"] == kind and tr.provenance.model["scheduler"] == type(pipe.scheduler).__name__


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "euler"])
def test_parity_on_order_one_latents(kind):
    # ε-UNet under mild betas: latents O(5), the scale of trained models' latents, so the bound is ~1e-5 absolute
    pipe = tiny_sd_pipeline(kind, betas=MILD_BETAS)
    ref = stock(pipe, 7.5)
    assert 1 < ref.abs().max() < 10
    assert_parity(ours(pipe, 7.5).x_0, ref)


def test_guidance_and_seeds_matter_and_unguided_skips_eps_u(pipes):
    pipe = pipes["epsilon"]
    pipe.scheduler = make_scheduler("ddim")
    guided, plain = stock(pipe, 7.5), stock(pipe, 1.0)
    assert (guided - plain).abs().max() > 1e-2 and (guided[0] - guided[1]).abs().max() > 1e-2  # not vacuous
    tr = ours(pipe, 1.0)  # the pipeline skips CFG at w <= 1; so does the loop at w = 1
    assert_parity(tr.x_0, plain)
    assert bool(tr.eps_u.isnan().all())


def test_ddim_eta_one_uses_the_same_noise_streams(pipes):
    pipe = pipes["epsilon"]
    pipe.scheduler = make_scheduler("ddim")
    assert_parity(ours(pipe, 5.0, eta=1.0).x_0, stock(pipe, 5.0, eta=1.0))
    assert (stock(pipe, 5.0, eta=1.0) - stock(pipe, 5.0)).abs().max() > 1e-2


def test_initial_noise_matches_pipeline_generators(pipes):
    pipe = pipes["epsilon"]
    pipe.scheduler = make_scheduler("ddim")
    gens = [torch.Generator().manual_seed(s) for s in (5, 3)]
    ref = pipe.prepare_latents(2, 4, 16, 16, torch.float32, torch.device("cpu"), gens)
    assert torch.equal(SeededNoise([5, 3]).randn((4, 8, 8)), ref)  # a list of generators = one stream per seed
    # a single generator draws the whole batch at once: the same as SeededNoise only for batch size 1
    one = pipe.prepare_latents(1, 4, 16, 16, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(SeededNoise([5]).randn((4, 8, 8)), one)


def test_euler_initial_latent_scale(pipes):
    # diffusers: x̃_T = init_noise_sigma · z in VE form; diffmem VP x_T = x̃_T / √(σ_max² + 1)
    pipe = pipes["epsilon"]
    sd = StableDiffusionAdapter(pipe)
    for spacing, expect_one in (("linspace", False), ("trailing", False), ("leading", True)):
        pipe.scheduler = make_scheduler("euler", timestep_spacing=spacing)
        spec = sd.sampler(STEPS)
        pipe.scheduler.set_timesteps(STEPS)
        sigma_max = float(pipe.scheduler.sigmas.max())
        expected = float(pipe.scheduler.init_noise_sigma) / (sigma_max**2 + 1) ** 0.5
        assert spec.x_T_scale == pytest.approx(expected, rel=1e-6)
        assert (spec.x_T_scale == 1.0) == expect_one
    pipe.scheduler = make_scheduler("euler")  # linspace: an unscaled x_T is measurably off
    spec = sd.sampler(STEPS)
    z = SeededNoise(SEEDS).randn((4, 8, 8))
    from diffmem import sample
    wrong = sample(sd, z, spec.grid, sd.prompts(PROMPTS), solver="euler", guidance=7.5).x_0
    ref = stock(pipe, 7.5)
    assert (wrong - ref).abs().max() > 1e-3 * ref.abs().max()


def test_prompt_embeddings_match_pipeline(pipes):
    pipe = pipes["epsilon"]
    sd = StableDiffusionAdapter(pipe)
    cond = sd.prompts(PROMPTS)
    c, null = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True)
    assert torch.equal(cond.c, c) and torch.equal(cond.null, null)
    assert cond.c.shape == (2, 77, 32)
    with pytest.raises(ValueError, match="2 negative prompts for 1"):
        sd.prompts(["a"], negative=["b", "c"])
    with pytest.raises(ValueError, match="strings"):
        sd.prompts([1, 2])


def test_codec_uses_scaling_factor_and_matches_pipeline_images(pipes):
    pipe = pipes["epsilon"]
    pipe.scheduler = make_scheduler("ddim", betas=MILD_BETAS)
    sd = StableDiffusionAdapter(pipe)
    sf = pipe.vae.config.scaling_factor
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = sd.codec.encode(images)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(z, pipe.vae.encode(images).latent_dist.mean * sf, rtol=0, atol=0)
        torch.testing.assert_close(sd.codec.decode(z), pipe.vae.decode(z / sf).sample, rtol=0, atol=0)
    tr = sd.generate(sd.prompts(PROMPTS), SEEDS, STEPS, guidance=7.5)
    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    ref = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, generator=gens, output_type="pt").images
    torch.testing.assert_close(sd.codec.to_unit(sd.codec.decode(tr.x_0)), ref, rtol=0, atol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    pipe = tiny_sd2_pipeline("euler")
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionAdapter.from_pretrained(tmp_path)
    tr = loaded.generate(loaded.prompts(PROMPTS), SEEDS, STEPS, guidance=7.5)
    assert torch.equal(tr.x_0, ours(pipe, 7.5).x_0)  # same weights, tokenizer and scheduler: bit for bit
    assert_parity(tr.x_0, stock(pipe, 7.5))
    model = tr.provenance.model
    assert model["source"] == str(tmp_path) and model["prediction_type"] == "v_prediction"
    assert model["pipeline"] == "StableDiffusionPipeline" and model["scheduler"] == "EulerDiscreteScheduler"
    assert tr.provenance.seeds == SEEDS and tr.provenance.grid["integer"] is False


def test_pndm_checkpoint_samples_with_ddim_from_its_own_config(pipes):
    # SD 1.4 ships a PNDMScheduler config; diffmem has no PLMS solver, so the user names one, and gets what
    # DDIMScheduler.from_config(that config) gives in diffusers
    import diffusers

    pipe = pipes["epsilon"]
    config = {**SD_BETAS, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}
    pipe.scheduler = diffusers.PNDMScheduler.from_config(config)
    sd = StableDiffusionAdapter(pipe)
    with pytest.raises(ValueError, match="clip_sample=True"):  # DDIM's default, which diffusers would apply
        sd.generate(sd.prompts(PROMPTS), SEEDS, STEPS, solver="ddim")
    pipe.scheduler = diffusers.PNDMScheduler.from_config({**config, "clip_sample": False})  # as SD 1.4's file
    sd = StableDiffusionAdapter(pipe)
    with pytest.raises(ValueError, match="'PNDMScheduler'.*solver="):
        sd.generate(sd.prompts(PROMPTS), SEEDS, STEPS)
    tr = sd.generate(sd.prompts(PROMPTS), SEEDS, STEPS, guidance=7.5, solver="ddim")
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    assert_parity(tr.x_0, stock(pipe, 7.5))


def test_adapter_follows_a_swapped_scheduler():
    pipe = tiny_sd_pipeline("ddim")
    sd = StableDiffusionAdapter(pipe)
    assert sd.prediction_type == "epsilon"
    pipe.scheduler = make_scheduler("euler", prediction_type="v_prediction")  # the diffusers idiom
    assert sd.prediction_type == "v_prediction" and sd.sampler(STEPS).solver == "euler"
    tr = sd.generate(sd.prompts(PROMPTS), SEEDS, STEPS, guidance=7.5)
    assert_parity(tr.x_0, stock(pipe, 7.5))
