"""Jain et al.'s guidance schedules and our first-step overshoot guard: mechanics on closed-form cases, and every
inference-time method unchanged on a tiny random diffusers Stable Diffusion."""

import math

import pytest
import torch

from detector_oracles import oracle_subjects
from diffmem.mitigations.base import MITIGATIONS, make_mitigation
from diffmem.mitigations.cfg_schedule import (
    DynamicTransitionPoint,
    OppositeDynamic,
    OppositeGuidance,
    StaticTransitionPoint,
    transition_on,
)
from diffmem.mitigations.ours_overshoot import OvershootGuard, first_step_gap
from diffmem.sampling.guidance import guide
from diffmem.sampling.trajectory import Recorder
from diffmem.schedules import x0_from_eps


@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    empirical, _, _ = oracle_subjects(k=8, steps=12)
    return empirical


def _planted(subject):
    return [p for p in subject.prompts if p.kind == "planted"]


def test_static_transition_is_off_at_large_t_and_on_at_small_t(oracle):
    """The WAH port inverts STP (guidance early, none late); ours must be off at *large* t."""
    p = _planted(oracle)[:1]
    traj = StaticTransitionPoint(tau=500.0, w1=0.0).sample(oracle, oracle.cond(p), [0], guidance=7.5,
                                                           recorder=Recorder(keep=()))
    t, w = traj.t, traj.w[:, 0]
    assert bool((t > 500).any() and (t <= 500).any())
    assert bool((w[t > 500] == 0).all()) and bool((w[t <= 500] == 7.5).all())
    og = OppositeGuidance(s=3.0, tau=650.0).sample(oracle, oracle.cond(p), [0], recorder=Recorder(keep=()))
    assert bool((og.w[og.t > 650, 0] == -3).all()) and bool((og.w[og.t <= 650, 0] == 7.5).all())


def test_opposite_guidance_on_the_exact_memorizer_pushes_away_from_the_training_point(oracle):
    """A one-image class is a point mass: x0_hat(c) = x exactly, so OG's clean estimate is x0_hat(∅) − s (x −
    x0_hat(∅)) and its distance to x is (1 + s) times the unconditional one (closed form)."""
    p = _planted(oracle)[0]
    x_t = torch.randn(1, *oracle.state_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    i = int((oracle.grid.timesteps - 700.0).abs().argmin())  # a mid-run state
    t, ab = oracle.grid.timesteps[i], float(oracle.grid.alpha_bar[i])
    pred = oracle.denoiser(x_t, t, p.cond)
    m_c, m_u = x0_from_eps(x_t, pred.eps_c, ab), x0_from_eps(x_t, pred.eps_u, ab)
    assert float((m_c - p.x).abs().max()) < 1e-6  # the point mass (tolerance: the posterior's float64 weights)
    s = 3.0
    w = OppositeGuidance(s=s).schedule(7.5).weight(i, len(oracle.grid), float(t), None)
    og = guide(pred, torch.tensor([float(w)], dtype=torch.float64), x_t, ab).x0_hat
    d_u = float((m_u - p.x).norm())
    assert float((og - p.x).norm()) == pytest.approx((1 + s) * d_u, rel=1e-6)
    # whole runs: opposite guidance throughout ends farther from the training point than no guidance, which ends
    # farther than plain sampling (a copy)
    seeds, cond = [0, 1, 2, 3], oracle.cond([p] * 4)
    far = {name: float((traj.x_0 - p.x).flatten(1).norm(dim=1).mean()) for name, traj in (
        ("plain", oracle.sample(cond, seeds, guidance=7.5, recorder=Recorder(keep=()))),
        ("none", StaticTransitionPoint(tau=-1.0).sample(oracle, cond, seeds, recorder=Recorder(keep=()))),
        ("og", OppositeGuidance(s=s, tau=-1.0).sample(oracle, cond, seeds, recorder=Recorder(keep=()))))}
    assert far["plain"] < 1e-3 < far["none"] < far["og"]


def test_transition_triggers_and_latch_on_a_hand_made_history():
    d = torch.tensor([[5.0, 4.0, 3.0, 3.5, 3.2, 4.0]]).T  # one sample: decreases, a minimum at j = 2, …
    first = [bool(transition_on(d[:k + 1])[0]) for k in range(6)]
    assert first == [False, False, False, True, True, True]  # d_1 > d_2 < d_3: on from step 3, latched
    two = [bool(transition_on(d[:k + 1], "two_decreases")[0]) for k in range(6)]
    assert two == [False, False, True, True, True, True]  # d_0 > d_1 > d_2: on from step 2
    loose = [bool(transition_on(d[:k + 1], "two_decreases", latch=False)[0]) for k in range(6)]
    # frozen d_{i−1} = 4.0 at the switch: on while d_j < 4.0 (3.5, 3.2), off at 4.0
    assert loose == [False, False, True, True, True, False]
    with pytest.raises(ValueError, match="trigger"):
        DynamicTransitionPoint(trigger="local_min")


def test_dynamic_transition_weights_follow_the_recorded_d_t(oracle):
    p = _planted(oracle)[:2]
    for m in (DynamicTransitionPoint(), OppositeDynamic(s=2.0), DynamicTransitionPoint("two_decreases", False, 0.0)):
        traj = m.sample(oracle, oracle.cond(p), [0, 1], guidance=5.0, recorder=Recorder(keep=()))
        assert bool(torch.isfinite(traj.d_t).all())  # ε_u evaluated at every step, also where w = 1
        for i in range(traj.num_recorded):
            on = transition_on(traj.d_t[:i + 1], m.trigger, m.latch)
            early = m.w_early if hasattr(m, "w_early") else -m.s
            assert torch.equal(traj.w[i], torch.where(on, 5.0, early).double())


def test_overshoot_guard_reads_the_first_step_gap_and_leaves_unflagged_samples_plain(oracle):
    p = oracle.prompts[:4]
    cond, seeds = oracle.cond(p), [0, 1, 2, 3]
    plain = oracle.sample(cond, seeds, guidance=7.5, recorder=Recorder(keep=("eps_c", "eps_u", "x_t")))
    ab = float(plain.alpha_bar[0])
    m_c, m_u = x0_from_eps(plain.x_t[0], plain.eps_c[0], ab), x0_from_eps(plain.x_t[0], plain.eps_u[0], ab)
    rho = (m_c - m_u).flatten(1).norm(dim=1) / math.sqrt(m_c[0].numel())
    got = first_step_gap(plain.d_t[0], ab, m_c[0].numel())
    assert torch.allclose(got, rho.double(), rtol=1e-9)  # x̂₀ is affine in ε: the gap is d_T rescaled
    never = OvershootGuard(rho=1e9).sample(oracle, cond, seeds, recorder=Recorder(keep=()))
    assert torch.equal(never.x_0, plain.x_0)  # nothing flagged: plain sampling bit for bit
    always = OvershootGuard(rho=0.0, tau=300.0).sample(oracle, cond, seeds, recorder=Recorder(keep=()))
    t, w = always.t, always.w
    assert bool((w[0] == 7.5).all()) and bool((w[1:][t[1:] > 300] == 0).all())
    assert bool((w[t <= 300] == 7.5).all())
    with pytest.raises(ValueError, match="constant CFG weight"):
        OvershootGuard().sample(oracle, cond, seeds, guidance=1.0)


def test_registry_lists_the_guidance_methods_with_knob_and_grid():
    for name, knob in (("jain-stp", "tau"), ("jain-og", "s"), ("jain-dtp", "trigger"), ("jain-og-dtp", "s"),
                       ("ours-overshoot", "rho")):
        m = make_mitigation(name)
        assert m.kind == "inference" and m.knob == knob and len(m.grid) >= 2 and m.describe()["name"] == name
    assert MITIGATIONS["ours-overshoot"].ours and not MITIGATIONS["jain-stp"].ours
    assert StaticTransitionPoint.grid == (999.0, 978.6, 958.2, 937.8, 917.4)


GUIDANCE_METHODS = ("jain-stp", "jain-og", "jain-dtp", "jain-og-dtp", "ours-overshoot")


@pytest.mark.parametrize("name", GUIDANCE_METHODS)
def test_every_guidance_method_runs_unchanged_on_tiny_diffusers_sd(name, tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from PIL import Image

    from diffmem.adapters.diffusers_sd import StableDiffusionAdapter
    from diffmem.adapters.subject import adapter_subject
    from diffusers_tiny import tiny_sd_pipeline

    torch.set_num_threads(1)
    adapter = StableDiffusionAdapter(tiny_sd_pipeline())
    _, h, w = adapter.latent_shape()
    size = h * adapter.codec.downsample
    rows = []
    for i, text in enumerate(["a cat", "the dog sat"]):
        px = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8).numpy()
        Image.fromarray(px).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "prompt": text, "image": str(tmp_path / f"{i}.png"), "kind": "planted"})
    subject = adapter_subject(adapter, rows, steps=6)
    m = make_mitigation(name, **({"rho": 0.0, "tau": 500.0} if name == "ours-overshoot" else {}))
    traj = m.sample(subject, subject.cond(), [0, 1], guidance=5.0, recorder=Recorder(keep=()))
    assert traj.x_0.shape == (2, *subject.state_shape) and bool(torch.isfinite(traj.x_0).all())
    assert bool(torch.isfinite(traj.d_t).all())
    if name == "jain-stp":  # guidance off at large t on SD's own timesteps
        assert bool((traj.w[traj.t > 500] == 0).all()) and bool((traj.w[traj.t <= 500] == 5.0).all())
    if name == "ours-overshoot":  # every sample flagged (rho = 0): withheld after the first step while t > 500
        assert bool((traj.w[1:][traj.t[1:] > 500] == 0).all()) and bool((traj.w[0] == 5.0).all())
