"""Every inference-time mitigation of the embedding, caption, attention and initial-noise families runs unchanged on
a tiny random Stable Diffusion (adapter subject), leaves the caller's model as it was and changes the run."""

import pytest
import torch

from diffmem.attention import attention
from diffmem.mitigations.base import make_mitigation
from diffmem.mitigations.sail import first_step_sharpness
from diffusers_tiny import one_thread  # noqa: F401 (fixture)
from mitigation_subjects import snapshot, tiny_sd_subject, unchanged

pytest.importorskip("diffusers")

SETTINGS = {
    "wen-embedding": {"target_loss": 0.0, "max_steps": 2},
    "kim-embedding": {},
    "somepalli-gni": {},
    "somepalli-rt": {"n_tokens": 2},
    "ren-attention": {},
    "han-batchwise": {"rho": 1.0, "tau": 500.0},
    "han-per-sample": {"target_loss": 0.0, "max_steps": 2},
    "sail": {"threshold": 0.0, "max_steps": 2},
}


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_sd_subject(tmp_path_factory.mktemp("sd"))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_runs_on_tiny_stable_diffusion_and_leaves_the_model_alone(sd, name):
    cond, seeds, saved = sd.cond(), [0, 1], snapshot(sd)
    processors = {n: type(m.processor) for n, m in attention(sd.net).modules.items()}
    traj = make_mitigation(name, **SETTINGS[name]).sample(sd, cond, seeds, guidance=7.5)
    plain = sd.sample(cond, seeds, guidance=7.5)
    assert traj.x_0.shape == plain.x_0.shape and bool(torch.isfinite(traj.x_0).all())
    assert not torch.equal(traj.x_0, plain.x_0)
    assert unchanged(sd, saved) and processors == {n: type(m.processor) for n, m in attention(sd.net).modules.items()}


def test_ren_masks_the_padding_after_the_first_eos_of_a_clip_prompt(sd):
    from diffmem.mitigations.attention_edit import prompt_lengths

    tok = sd.denoiser.pipeline.tokenizer
    lengths = prompt_lengths(sd, sd.cond())
    assert lengths.tolist() == [len(tok(p.text).input_ids) for p in sd.prompts]
    assert all(2 < n < 77 for n in lengths.tolist())


def test_sharpness_statistic_runs_on_the_unet(sd):
    from diffmem.mitigations.first_step import first_step

    start = first_step(sd, [0, 1])
    assert bool((first_step_sharpness(sd, start.x_T, start, sd.cond()) > 0).all())


@torch.no_grad()
def test_ren_at_scale_one_without_mask_is_the_stock_unet_within_round_off(sd):
    from diffmem.mitigations.attention_edit import RenAttention
    from diffmem.mitigations.first_step import first_step
    from roundoff import order_atol

    cond, start = sd.cond(), first_step(sd, [0, 1])
    plain = sd.denoiser(start.x_T, start.t, cond)
    with RenAttention(bos_logit_scale=1.0, mask=False).hooks(sd, cond):  # explicit softmax instead of the fused one
        edited = sd.denoiser(start.x_T, start.t, cond)
    for a, b in ((edited.eps_c, plain.eps_c), (edited.eps_u, plain.eps_u)):
        assert float((a - b).abs().max()) <= order_atol(b)
    with RenAttention(bos_logit_scale=1.25).hooks(sd, cond):
        scaled = sd.denoiser(start.x_T, start.t, cond)
    assert float((scaled.eps_c - plain.eps_c).abs().max()) > 1e3 * order_atol(plain.eps_c)
