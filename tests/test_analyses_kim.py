"""Kim et al. (2025) analyses A1–A4 against their analytic oracles."""

import json

import numpy as np
import pytest
import torch

from diffmem import Cond, Denoiser, SeededNoise, sample
from diffmem.analyses.convergence import collapse_step, convergence, dispersion, mean_pairwise_distance
from diffmem.analyses.correlation import correlate
from diffmem.analyses.decomposition import decompose, decompose_trajectory
from diffmem.analyses.noise_content import noise_content
from diffmem.analyses.overestimation import guided_loss
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from helpers import PointMass, ToyMemorizer


def toy_cond(n):
    return Cond(torch.zeros(n, dtype=torch.long), torch.full((n,), -1))


def test_decompose_matches_least_squares_and_basics():
    x, x_T = torch.randn(2, 3, 2, 5, dtype=torch.float64)  # 3 seeds of a 2x5 "image"
    z = torch.randn(7, 3, 2, 5, dtype=torch.float64)
    w0, wT, resid = decompose(z, x, x_T)
    for s in range(3):
        A = torch.stack([x[s].flatten(), x_T[s].flatten()], 1)
        ref = torch.linalg.lstsq(A, z[:, s].flatten(1).T).solution
        torch.testing.assert_close(torch.stack([w0[:, s], wT[:, s]]), ref)
    one = [v.squeeze() for v in decompose(x, x, x_T)[:2]] + [v.squeeze() for v in decompose(x_T, x, x_T)[:2]]
    torch.testing.assert_close(torch.stack(one), torch.tensor([[1.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3]).double())
    with pytest.raises(ValueError, match="collinear"):
        decompose(z, 2 * x_T, x_T)
    with pytest.raises(ValueError, match="shapes"):
        decompose(z[..., :4], x, x_T)


def test_ddim_oracle_has_zero_deviation(sd_schedule, sd_grid):
    # consistent start: every latent is exactly (sqrt(ab), sqrt(1 - ab)), so D1 = D2 = 0
    x, x_T = torch.randn(2, 3, 64, dtype=torch.float64)
    ab0 = float(sd_grid.alpha_bar[0])
    z0 = ab0**0.5 * x + (1 - ab0) ** 0.5 * x_T
    tr = sample(PointMass(x, sd_schedule), z0, sd_grid, Cond(torch.zeros(3)), guidance=1.0)
    tr = type(tr)(**{**tr.__dict__, "x_T": x_T})  # decompose onto the noise part, not the start state
    dec = decompose_trajectory(tr, x)
    assert abs(dec.D1) < 1e-9 and abs(dec.D2) < 1e-9 and float(dec.resid.max()) < 1e-10
    assert dec.w0.shape == (50, 3)


@pytest.mark.parametrize("g,D1", [(1, -2.7433), (7.5, 160.1510), (10, 222.8026)])
def test_toy_memorizer_deviation_via_trajectory(sd_schedule, sd_grid, g, D1):
    # the exact memorizer through the library path, with 4 seeds sharing one image
    x = torch.randn(64, dtype=torch.float64)
    x_T = SeededNoise(range(10, 14), dtype=torch.float64).randn((64,))  # seed 0 would equal x (autouse seed)
    tr = sample(ToyMemorizer(x[None], sd_schedule), x_T, sd_grid, toy_cond(4), guidance=g)
    dec = decompose_trajectory(tr, x)
    assert dec.D1 == pytest.approx(D1, abs=2e-4) and dec.D2 == pytest.approx(-0.1044, abs=1e-4)
    # self-referenced variant: each seed's final sample as the image; for the toy x_0 = 0.99735 g x + ...
    selfref = decompose_trajectory(tr, tr.x_0)
    assert selfref.w0.shape == (50, 4) and float(selfref.w0[-1].min()) == pytest.approx(1.0, abs=1e-9)


def test_guided_loss_toy_memorizer_oracle(sd_schedule, sd_grid):
    # exact memorizer: x0_hat(c) = x, x0_hat(null) = 0 gives k = g exactly and guided clean error (g - 1)||x||,
    # i.e. an eps-space loss ab/(1 - ab) (g - 1)^2 ||x||^2, zero for the conditional branch
    x = torch.randn(1, 32, dtype=torch.float64)
    gs = (1, 3, 7.5)
    res = guided_loss(ToyMemorizer(x, sd_schedule), x[0], toy_cond(1), sd_grid, g=gs, draws=4)
    ab, xx = sd_grid.alpha_bar, float((x * x).sum())
    torch.testing.assert_close(res.k_guided, torch.tensor(gs).double()[:, None].expand(3, 50))
    torch.testing.assert_close(res.k_cond, torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(res.k_uncond, torch.zeros(50, dtype=torch.float64))
    expect = torch.stack([ab / (1 - ab) * (g - 1) ** 2 * xx for g in gs])
    torch.testing.assert_close(res.loss_guided, expect)
    assert float(res.loss_cond.abs().max()) < 1e-18 * xx
    torch.testing.assert_close(res.loss_uncond, ab / (1 - ab) * xx)


def test_guided_loss_bad_input(sd_schedule, sd_grid):
    x = torch.randn(1, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch 2"):
        guided_loss(ToyMemorizer(x, sd_schedule), x, toy_cond(2), sd_grid)
    with pytest.raises(ValueError, match="0"):
        guided_loss(ToyMemorizer(x, sd_schedule), x, toy_cond(1), sd_grid, draws=0)


def test_noise_content_first_step(sd_schedule, sd_grid):
    # at step 0, x_t = x_T: eps_u = x_T / sqrt(1 - ab) (x0_hat(null) = 0), so cos(eps_u, x_T) = 1, and
    # eps_c = (x_T - sqrt(ab) x) / sqrt(1 - ab), whose cosine with x is known in closed form
    x = torch.randn(64, dtype=torch.float64)
    x_T = SeededNoise(range(10, 13), dtype=torch.float64).randn((64,))
    tr = sample(ToyMemorizer(x[None], sd_schedule), x_T, sd_grid, toy_cond(3), guidance=7.5)
    cos = noise_content(tr, x)
    torch.testing.assert_close(cos["cos_eps_u_xT"][0], torch.ones(3, dtype=torch.float64))
    ab = float(sd_grid.alpha_bar[0])
    e_c = x_T - ab**0.5 * x
    torch.testing.assert_close(cos["cos_eps_c_x"][0], (e_c @ x) / (e_c.norm(dim=1) * x.norm()))
    assert cos["cos_eps_x"].shape == (50, 3)


def test_dispersion_and_collapse():
    z = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    ref = [np.trace(np.cov(z[k].flatten(1).numpy().T)) / 15 for k in range(4)]
    np.testing.assert_allclose(dispersion(z).numpy(), ref)
    zf = z.flatten(2)
    pair = [np.mean([float((zf[k, i] - zf[k, j]).norm()) for i in range(6) for j in range(6) if i != j])
            for k in range(4)]
    np.testing.assert_allclose(mean_pairwise_distance(z).numpy(), pair)
    assert collapse_step(torch.tensor([1.0, 0.5, 0.05, 0.01])) == 2 and collapse_step(torch.ones(3)) is None
    with pytest.raises(ValueError, match="N >= 2"):
        dispersion(z[:, :1])


def test_seeds_collapse_on_a_memorized_prompt_not_on_a_generalizing_one(sd_schedule, sd_grid):
    train = torch.randn(16, 32, dtype=torch.float64)
    x_T = SeededNoise(range(8), dtype=torch.float64).randn((32,))
    cond = Cond(torch.full((8,), 3), torch.full((8,), -1))
    mem = sample(GaussianMixtureDenoiser(train, sd_schedule), x_T, sd_grid, cond, guidance=7.5)
    gen = sample(GaussianMixtureDenoiser(train, sd_schedule, var=1.0), x_T, sd_grid, cond, guidance=1.0)
    c_mem, c_gen = convergence(mem), convergence(gen)
    # the memorizing class-conditional denoiser has one component per class: all seeds land on train[3]
    assert float(c_mem["V_ratio_x_t"][-1]) < 0.01 and c_mem["collapse_x_t"] is not None
    assert float(c_gen["V_ratio_x_t"][-1]) > 0.3 and c_gen["collapse_x_t"] is None


def test_correlate_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = 2 * a + rng.normal(size=40)
    r = correlate(a, b, n_boot=300)
    assert r["pearson"] == pytest.approx(stats.pearsonr(a, b)[0])
    assert r["spearman"] == pytest.approx(stats.spearmanr(a, b)[0])
    assert r["pearson_ci"][0] < r["pearson"] < r["pearson_ci"][1] and r["n"] == 40
    assert correlate(np.exp(a), a, n_boot=50)["spearman"] == pytest.approx(1.0)
    assert np.isnan(correlate([1, 1, 1], [1, 2, 3])["pearson"])
    with pytest.raises(ValueError, match="equal length"):
        correlate([1, 2], [1, 2, 3])


def test_kim_study_separates_memorized_prompts(sd_schedule, tmp_path):
    from diffmem import discrete_grid
    from diffmem.analyses.kim import KimConfig, KimResult, run_kim
    from diffmem.sampling.spec import SamplerSpec
    from diffmem.subject import Prompt, Subject

    # 4 planted prompts: one narrow component at a training image (memorized); 4 generic prompts: one narrow
    # component at a class mean whose 5 training images lie around it (samples land between training images)
    g = torch.Generator().manual_seed(12345)  # not a sampling seed: x must not equal some x_T
    d = 3 * 4 * 4
    planted = torch.randn(4, d, generator=g, dtype=torch.float64)
    means = 2 * torch.randn(4, d, generator=g, dtype=torch.float64)
    broad = means.repeat_interleave(5, 0) + torch.randn(20, d, generator=g, dtype=torch.float64)
    train = torch.cat([planted, broad]).view(-1, 3, 4, 4)
    den = GaussianMixtureDenoiser(torch.cat([planted, means]), sd_schedule, var=0.01)
    prompts = [Prompt(f"c{k}", f"prompt {k}", Cond(torch.tensor([k]), torch.tensor([-1])),
                      "planted" if k < 4 else "nonplanted", train[k] if k < 4 else train[4 + 5 * (k - 4)])
               for k in range(8)]

    class Flat(Denoiser):  # the mixture works on flat vectors; the study sees [3, 4, 4] images
        prediction_type, name, schedule = "sample", "gmm", sd_schedule

        def model_output(self, x_t, t, c):
            return den.model_output(x_t.flatten(1), t, c).view_as(x_t)

    def sampler(n):
        return SamplerSpec(discrete_grid(sd_schedule, n, steps_offset=1, next_rule="ratio", final="first"), "ddim",
                           1.0, sd_schedule)

    subject = Subject("planted-gmm", Flat(), None, (3, 4, 4), sampler, prompts, steps=20, references=train)
    res = run_kim(subject, KimConfig(n_seeds=4, draws=4, n_boot=100, sweep=(1.0, 7.5), primary="l2_sim"))
    s = res.summary
    assert s.n_memorized == 4 and s.n_nonmemorized == 4 and s.n_prompts == 8
    assert {p.id for p in res.prompts if p.severity["copy_rate"] == 1.0} == {"c0", "c1", "c2", "c3"}
    # memorized prompts deviate more from the schedule; guidance inflates their loss (relative to the conditional
    # loss) far more than for generic prompts, and x0_hat overshoots the image more at the first step
    assert min(p.D1 for p in res.prompts[:4]) > max(p.D1 for p in res.prompts[4:])
    assert s.pearson_D1 > 0.5
    assert s.loss_guided_mem / s.loss_cond_mem > 2 * s.loss_guided_nonmem / s.loss_cond_nonmem
    assert s.first_step_overshoot_mem > s.first_step_overshoot_nonmem
    # A5: the deviation of memorized prompts grows with g (linearly for an exact memorizer)
    assert s.sweep_g == [1.0, 7.5] and s.sweep_D1["mem"][1] > s.sweep_D1["mem"][0] + 1
    assert s.to_dict()["sweep_l2_sim_mem"] == s.sweep_severity["mem"]
    assert set(res.prompts[0].severity) >= {"copy_rate", "l2_sim", "cosine"}
    res.save(tmp_path)
    back = KimResult.load(tmp_path)
    assert back.summary.to_dict() == res.summary.to_dict() and back.config == res.config
    assert isinstance(back.prompts[0], type(res.prompts[0]))
    assert torch.equal(back.prompts[2].w0, res.prompts[2].w0)
    # figures render from the loaded result alone
    from diffmem.reports.kim_figures import render_kim_figures

    paths = render_kim_figures(back, tmp_path / "fig")
    assert [p.name[:2] for p in paths] == ["F1", "F2", "F3", "F4", "F5", "F6"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_kim_runs_unchanged_on_a_tiny_diffusers_sd(tmp_path):
    # numbers are meaningless on a random model; every field must be produced through the adapter path
    pytest.importorskip("diffusers")
    from PIL import Image

    from diffmem.adapters.subject import diffusers_subject
    from diffmem.analyses.kim import KimConfig, run_kim
    from diffusers_tiny import tiny_sd_pipeline

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads
    try:
        tiny_sd_pipeline().save_pretrained(tmp_path / "sd")
        rng = np.random.default_rng(0)
        rows = []
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
            rows.append(json.dumps({"prompt": f"a photo of thing {i}", "image": f"{i}.png", "kind": "planted"}))
        (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
        subject = diffusers_subject(tmp_path / "sd", tmp_path / "m.jsonl", steps=6)
        res = run_kim(subject, KimConfig(n_seeds=2, draws=2, n_boot=20, sweep=(1.0, 7.5), primary="l2_sim"))
    finally:
        torch.set_num_threads(n)
    assert subject.prompts[0].x.shape == (4, 8, 8) and len(res.prompts) == 3
    assert subject.prompts[1].text == "a photo of thing 1" and subject.prompts[1].kind == "planted"
    assert torch.equal(subject.references[2], subject.prompts[2].x) and subject.state_shape == (4, 8, 8)
    # an edited copy of the UNet leaves the subject's own model as it was
    x_t, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    c = subject.prompts[0].cond.c
    before = subject.denoiser.model_output(x_t, t, c)
    zeroed = subject.edited(lambda net: torch.nn.init.zeros_(net.conv_out.weight))
    assert torch.equal(subject.denoiser.model_output(x_t, t, c), before)
    assert not torch.equal(zeroed.denoiser.model_output(x_t, t, c), before)
    assert zeroed.denoiser.pipeline.vae is subject.denoiser.pipeline.vae
    assert res.summary.n_prompts == 3 and res.summary.n_seeds == 2 and np.isfinite(res.summary.pearson_D1)
    p = res.prompts[0]
    assert p.w0.shape == (6,) and p.loss_guided.shape == (2, 6) and np.isfinite(p.D1)
    assert res.provenance.model["class"] == "StableDiffusionAdapter"


def test_manifest_errors(tmp_path):
    from diffmem.adapters.subject import read_manifest

    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "image": "nope.png"}\n')
    with pytest.raises(ValueError, match="nope.png"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="'image'"):
        read_manifest(tmp_path / "m.jsonl")


def test_kim_on_an_embedded_world_subject(tmp_path, monkeypatch):
    from diffmem.analyses.kim import KimConfig, run_kim
    from diffmem.runners.kim import kim_world_subject
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    subject = kim_world_subject(load_world(tiny(steps=2), progress=False), steps=4, per_kind=2)
    assert [p.kind for p in subject.prompts] == ["planted", "planted", "nonplanted", "nonplanted"]
    assert all(p.x is not None and p.x.shape == subject.state_shape for p in subject.prompts)
    res = run_kim(subject, KimConfig(n_seeds=2, draws=2, n_boot=10, sweep=(7.5,), primary="l2_sim"))
    assert [p.id for p in res.prompts] == [p.id for p in subject.prompts] and res.summary.n_prompts == 4
    assert res.provenance.extra["subject"] == subject.name and res.prompts[0].w0.shape == (4,)
    # a prompt without a training image gets the training-data-free analyses; its self-referenced D is the one
    # of the same trajectory (same seeds) when it had an image
    part = run_kim(_unpaired(subject), KimConfig(n_seeds=2, draws=2, n_boot=10, sweep=(7.5,), primary="l2_sim"))
    assert [p.id for p in part.prompts] == [p.id for p in subject.prompts[:3]]
    assert [s.id for s in part.selfref] == [subject.prompts[3].id] and part.summary.n_prompts == 3
    assert part.selfref[0].D1_selfref == res.prompts[3].D1_selfref
    assert part.selfref[0].D2_selfref == res.prompts[3].D2_selfref
    assert list(part.skipped) == ["A1 guided loss, A2 noise content, D1/D2 against the training image, severity and "
                                  "the A5 sweep"]


def _unpaired(subject):
    from dataclasses import replace

    return replace(subject, prompts=(*subject.prompts[:3], replace(subject.prompts[3], x=None)))


def test_kim_summary_round_trips():
    from diffmem.analyses.kim_summary import GROUPS, KimSummary

    s = KimSummary(n_prompts=5, n_seeds=3, primary_severity="cosine", pearson_D1=0.5, pearson_D1_ci=[0.1, 0.9],
                   correlations_by_severity={"cosine": {"D1": 0.5}}, n_memorized=2, loss_guided_mem=3.0,
                   sweep_g=[1.0, 7.5], sweep_D1={t: [0.0, 1.0] for t in GROUPS},
                   sweep_severity={t: [0.2, 0.3] for t in GROUPS}, sweep_copy_rate={t: [0.0, 0.5] for t in GROUPS})
    d = s.to_dict()
    assert d["sweep_cosine_all"] == [0.2, 0.3] and d["pearson_D1_ci"] == [0.1, 0.9] and "sweep_severity" not in d
    assert list(d)[:4] == ["n_prompts", "n_seeds", "primary_severity", "pearson_D1"]
    back = KimSummary.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == json.loads(json.dumps(d)) and back.pearson_D1_ci == (0.1, 0.9)
    plain = KimSummary(n_prompts=3, n_seeds=2, primary_severity="ssim", pearson_D1=1.0, pearson_D1_ci=(0.0, 1.0))
    assert KimSummary.from_dict(plain.to_dict()).to_dict().keys() == plain.to_dict().keys()
    assert "sweep_g" not in plain.to_dict()
