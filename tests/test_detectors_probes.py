"""Probes: cost by the harness's conventions (NFE, JVP and VJP rows per generation) and JVPs through a network."""

import dataclasses

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from detector_oracles import oracle_subjects
from diffmem.denoiser import Denoiser
from diffmem.detectors import make_detector
from diffmem.detectors.probes import guided_states, initial_states, jvp_eps

EPS64 = torch.finfo(torch.float64).eps


class Counting(Denoiser):
    """Counts the rows of every model call as NFE, JVP (dual input) or VJP (input requiring grad)."""

    def __init__(self, inner: Denoiser):
        self.inner, self.schedule, self.name = inner, inner.schedule, inner.name
        self.prediction_type = inner.prediction_type
        self.rows = {"nfe": 0, "jvp": 0, "vjp": 0}

    def model_output(self, x_t, t, c):
        kind = "jvp" if fwAD.unpack_dual(x_t).tangent is not None else "vjp" if x_t.requires_grad else "nfe"
        self.rows[kind] += x_t.shape[0]
        return self.inner.model_output(x_t, t, c)


# rows per generation: (NFE, JVP, VJP)
COST = {"jeon-sharpness": (2, 2, 0), "jeon-sharpness-vjp": (0, 0, 2), "asthana-anisotropy": (4, 0, 0),
        "early-m2": (0, 0, 2), "early-dsm01": (3, 0, 0), "early-dsm12": (5, 0, 0), "webster-onestep": (2, 0, 0)}


@pytest.mark.parametrize("name", sorted(COST))
def test_cost_per_generation_by_the_harness_conventions(name):
    empirical, _, _ = oracle_subjects(k=4)
    counting = Counting(empirical.denoiser)
    subject = dataclasses.replace(empirical, denoiser=counting)
    make_detector(name, batch_size=3).score(subject, subject.prompts, [0, 1])
    generations = len(subject.prompts) * 2
    assert tuple(counting.rows[k] / generations for k in ("nfe", "jvp", "vjp")) == COST[name]


@pytest.mark.parametrize("name", sorted(COST))
def test_scores_do_not_depend_on_batching_and_n1_is_a_prefix(name):
    empirical, _, _ = oracle_subjects(k=6)
    seeds = [0, 1, 2]
    a = make_detector(name, batch_size=5).score_generations(empirical, empirical.prompts, seeds)
    b = make_detector(name).score_generations(empirical, empirical.prompts, seeds)
    c = make_detector(name).score_generations(empirical, empirical.prompts, seeds[:1])
    tol = 1e6 * EPS64 * float(b.abs().max())  # float64 round-off of other batch shapes (chunked mixture sums)
    assert a.shape == b.shape == (6, 3) and float((a - b).abs().max()) <= tol
    assert float((c[:, 0] - b[:, 0]).abs().max()) <= tol


def test_sharpness_at_k_steps_adds_the_trajectory_and_one_probe_per_state():
    empirical, _, _ = oracle_subjects(k=4)
    counting = Counting(empirical.denoiser)
    subject = dataclasses.replace(empirical, denoiser=counting)
    make_detector("jeon-sharpness", k=3).score(subject, subject.prompts, [0])
    assert counting.rows == {"nfe": 4 * (2 * 2 + 3 * 2), "jvp": 4 * 3 * 2, "vjp": 0}


def test_guided_states_start_at_the_subjects_x_T_and_refuse_a_missing_null_branch():
    empirical, _, _ = oracle_subjects(k=4)
    cond = empirical.cond()
    states, ts, abars = guided_states(empirical, cond, [5] * 4, 2)
    traj = empirical.sample(cond, [5] * 4, first=1)
    assert torch.equal(states[0], traj.x_T) and torch.equal(states[0], initial_states(empirical, [5] * 4))
    assert torch.equal(ts, empirical.spec.grid.timesteps[:2]) and torch.equal(abars, empirical.spec.grid.alpha_bar[:2])
    with pytest.raises(ValueError, match="null branch"):
        guided_states(empirical, dataclasses.replace(cond, null=None), [0] * 4, 1)
    with pytest.raises(ValueError, match="probed steps"):
        guided_states(empirical, cond, [0] * 4, 0)


def test_forward_mode_jvp_through_the_world_dit_equals_the_reverse_mode_jacobian(tmp_path, monkeypatch):
    """The text world's DiT (cross- and self-attention) in float64: J v by forward-mode AD under the math SDPA
    kernel equals J v from the full reverse-mode Jacobian, and every detector here runs on the network."""
    from diffmem.worlds.subject import world_subject
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    world = load_world(tiny(steps=2), progress=False)
    world.net.double()
    subject = world_subject(world, steps=10)
    prompts = subject.prompts[:2]
    cond = subject.cond(prompts)
    x = initial_states(subject, [0, 1])
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = subject.spec.grid.timesteps[0]
    _, _, jv_c, jv_u = jvp_eps(subject, x, t, cond, v)
    for b in range(2):
        one = cond.select([b])
        J_c = torch.autograd.functional.jacobian(lambda z, one=one: subject.denoiser(z, t, one).eps_c, x[b:b + 1])
        J_u = torch.autograd.functional.jacobian(lambda z, one=one: subject.denoiser(z, t, one).eps_u, x[b:b + 1])
        d = x[b].numel()
        for J, jv in ((J_c, jv_c), (J_u, jv_u)):
            ref = J.reshape(d, d) @ v[b].flatten()
            tol = 1e3 * EPS64 * float(J.abs().max() * v[b].abs().sum())
            assert float((jv[b].flatten() - ref).abs().max()) <= tol and float(ref.abs().max()) > 1e3 * tol
    for name in COST:
        scores = make_detector(name).score(subject, prompts, [0, 1])
        assert scores.shape == (2,) and bool(torch.isfinite(torch.as_tensor(scores)).all()), name


@pytest.mark.parametrize("family", ["sd", "pixart"])
def test_every_probe_detector_runs_on_tiny_diffusers_models_and_the_jvp_is_the_jacobian(family):
    """Forward-mode AD through a diffusers UNet / PixArt transformer (attention on the math SDPA kernel), fp32."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffmem.adapters.diffusers_sd import StableDiffusionAdapter
    from diffmem.adapters.pixart import PixArtAdapter
    from diffmem.detectors.token_attribution import token_attribution
    from diffmem.subject import Prompt, Subject
    from diffusers_tiny import tiny_pixart_pipeline, tiny_sd_pipeline

    torch.set_num_threads(1)
    adapter = StableDiffusionAdapter(tiny_sd_pipeline()) if family == "sd" else PixArtAdapter(tiny_pixart_pipeline())
    prompts = tuple(Prompt(str(i), text, adapter.prompts([text])) for i, text in enumerate(["a cat", "the dog sat"]))
    subject = Subject(family, adapter, adapter.model, adapter.latent_shape(), adapter.sampler, prompts, steps=10)
    for name in COST:
        scores = make_detector(name).score(subject, prompts, [0, 1])
        assert scores.shape == (2,) and bool(torch.isfinite(torch.as_tensor(scores)).all()), name
    x, cond, t = initial_states(subject, [0]), prompts[0].cond, subject.spec.grid.timesteps[0]
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    _, _, jv_c, _ = jvp_eps(subject, x, t, cond, v)
    J = torch.autograd.functional.jacobian(lambda z: adapter(z, t, cond).eps_c, x).reshape(x.numel(), x.numel())
    # fp32 round-off of a Jacobian row times v, both ways through the network: a few eps32 of Σ_j |J_ij v_j|
    tol = 1e2 * torch.finfo(torch.float32).eps * float((J.abs() @ v.flatten().abs()).max())
    assert float((jv_c.flatten() - J @ v.flatten()).abs().max()) <= tol
    if family == "sd":  # CLIP conditioning is a bare [B, 77, D] tensor: the caller names the prompt's positions
        real = torch.zeros(77, dtype=torch.bool)
        real[1:4] = True
        assert token_attribution(subject, prompts[1], [0], real=real).scores.shape == (3,)
    else:  # T5 captions: a mask and a trailing EOS
        att = token_attribution(subject, prompts[1], [0], special=(0, 1))
        assert att.scores.shape == (int(prompts[1].cond.c["mask"].sum()) - 1,) and bool((att.scores > 0).all())
