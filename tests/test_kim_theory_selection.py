"""Kim et al.'s proximity analysis, prompt-selection rule and forward-corruption bands: scipy/sklearn references,
the rule's edge cases on constructed data, and the bands' oracle d_gen = d_fwd on the forward corruption itself."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.mixture import GaussianMixture

from diffmem.analyses.kim_selection import (
    band_overlap,
    copy_similarity,
    corruption_distances,
    drop_rule,
    select_prompts,
    spearman,
    trajectory_distances,
)
from diffmem.analyses.kim_theory import ddim_coefficients
from diffmem.analyses.kim_theory_result import KimTheoryConfig, run_kim_theory
from diffmem.detectors.labels import planted_label
from diffmem.sampling.guidance import Constant
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.ssim import ssim
from roundoff import order_atol
from test_kim_theory import _subject, _train

F64 = torch.float64


def test_spearman_matches_scipy_with_ties_and_is_nan_when_constant():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        dist = torch.randint(0, 4, (9,), generator=g).double()  # ties on purpose
        s = torch.randn(9, generator=g, dtype=F64)
        assert spearman(dist, s) == pytest.approx(spearmanr(dist.numpy(), s.numpy()).statistic, abs=1e-12)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    assert spearman(torch.arange(4.0), -torch.arange(4.0)) == pytest.approx(-1.0)


def test_drop_rule_exact_half_is_kept_and_one_copy_above_threshold_keeps_a_prompt():
    low = torch.tensor([[1, 1, 0, 0],  # exactly half low: kept
                        [1, 1, 1, 0],  # more than half low, all similarities ≤ 0.75: dropped
                        [1, 1, 1, 0],  # more than half low, one seed above 0.75: kept
                        [1, 1, 1, 1]], dtype=torch.bool)  # all low, one seed exactly at 0.75 (not above): dropped
    s = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.1, 0.2, 0.3, 0.7], [0.1, 0.2, 0.3, 0.76], [0.1, 0.2, 0.3, 0.75]])
    assert drop_rule(low, s).tolist() == [False, True, False, True]


def test_select_prompts_on_two_clusters_matches_sklearn_and_labels_low_by_similarity():
    g = torch.Generator().manual_seed(0)
    # copies: small distance, high similarity; non-copies: large distance, low similarity
    near = torch.stack([0.1 + 0.02 * torch.randn(3, 4, generator=g), 0.9 + 0.02 * torch.randn(3, 4, generator=g)])
    far = torch.stack([2.0 + 0.1 * torch.randn(3, 4, generator=g), 0.2 + 0.05 * torch.randn(3, 4, generator=g)])
    dist, s = torch.cat([near[0], far[0]]).double(), torch.cat([near[1], far[1]]).double()
    s[4, 0] = 0.8  # a non-copy prompt with one seed above the threshold is kept anyway
    sel = select_prompts(dist, s)
    assert sel.low.tolist() == [[False] * 4] * 3 + [[True] * 4] * 3
    assert sel.dropped.tolist() == [False, False, False, True, False, True]
    X = torch.stack([dist.flatten(), s.flatten()], 1).numpy()
    Z = (X - X.mean(0)) / X.std(0)
    ref = GaussianMixture(2, covariance_type="full", random_state=0).fit(Z)
    lo = int(np.argmin(ref.means_[:, 1]))
    assert (ref.predict(Z) == lo).tolist() == sel.low.flatten().tolist()
    torch.testing.assert_close(sel.means[0], torch.from_numpy(ref.means_[lo] * X.std(0) + X.mean(0)))


def test_copy_similarity_is_ssim_on_images_and_cosine_on_vectors():
    g = torch.Generator().manual_seed(2)
    x, samples = torch.rand(1, 8, 8, generator=g) * 2 - 1, torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    torch.testing.assert_close(copy_similarity(samples, x), ssim(samples.double(), x.double().expand(3, 1, 8, 8)))
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(copy_similarity(v, torch.tensor([2.0, 0.0])), torch.tensor([1.0, 0.5**0.5], dtype=F64))
    with pytest.raises(ValueError, match="do not match"):
        copy_similarity(v, torch.zeros(3))


def _states(prompt: int, seeds: int, g: float):
    """A closed-form subject's prompt, its recorded trajectory and the ᾱ of every state (x_t[0…S−1], then x_0)."""
    s = _subject(_train())
    p = s.prompts[prompt]
    traj = s.sample(p.cond.select(torch.zeros(seeds, dtype=torch.long)), range(seeds), guidance=Constant(g),
                    recorder=Recorder(keep=("x_t",)))
    return p, traj, torch.cat([traj.alpha_bar, traj.alpha_bar_next[-1:]]).to(F64)


def test_bands_coincide_on_a_trajectory_equal_to_the_forward_corruption():
    p, traj, ab = _states(0, 3, 7.5)
    assert float(ab[-1]) == 1.0
    xs, x_T = p.x.to(F64), traj.x_T.to(F64)
    fwd = ab.sqrt()[:, None, None] * xs + (1 - ab).sqrt()[:, None, None] * x_T[None]  # α_k x* + σ_k x_T
    d_gen, d_fwd = trajectory_distances(replace(traj, x_t=fwd[:-1], x_0=fwd[-1]), p.x)
    assert float((d_gen - d_fwd).abs().max()) <= order_atol(d_gen, xs, x_T)
    assert float(d_fwd[-1].abs().max()) == 0.0  # ᾱ = 1: the forward corruption is x* itself
    assert bool(band_overlap(d_gen, d_fwd).all())


def test_exact_denoiser_unguided_trajectory_is_the_ddim_pure_noise_reference():
    # with x̂₀ = x* at every step, DDIM from x_T gives z_k = ω_0(k) x* + ω_T(k) x_T, ω_T = σ_k/σ_0 (VP σ)
    p, traj, ab = _states(2, 2, 1.0)
    xs, x_T = p.x.to(F64), traj.x_t[0].to(F64)
    A = torch.tensor([ddim_coefficients(float(ab[0]), float(a))[0] for a in ab], dtype=F64)
    w0 = ab.sqrt() - ab[0].sqrt() * A
    expect = ((w0 - 1)[:, None, None] * xs + A[:, None, None] * x_T[None]).norm(dim=2)
    d_gen, d_fwd = trajectory_distances(traj, p.x)
    assert float((d_gen - expect).abs().max()) <= order_atol(d_gen, xs, x_T, ulps=1000)
    direct = corruption_distances(torch.cat([traj.x_t, traj.x_0[None]]), ab, traj.x_T, p.x)
    torch.testing.assert_close(direct[0], d_gen)


def test_run_reports_proximity_selection_and_bands_against_the_planted_truth():
    s = _subject(_train(), var=0.3)  # a smoothed law: samples are not exact copies, so ρ and the GMM have signal
    res = run_kim_theory(s, KimTheoryConfig(n_seeds=4, draws=8, batch_prompts=6), planted=planted_label)
    sm, rows = res.summary, res.prompts
    rhos = torch.tensor([r.prox_rho for r in rows], dtype=F64)
    assert sm.proximity_rho_negative_fraction == pytest.approx(float((rhos < 0).double().mean()))
    assert sm.proximity_rho_median == pytest.approx(float(rhos.quantile(0.5)))
    for r, dist, sim in zip(rows, res.arrays["prox_l"], res.arrays["prox_s"], strict=True):
        assert r.prox_rho == pytest.approx(spearmanr(dist.numpy(), sim.numpy()).statistic, abs=1e-6)
    assert sm.selection_kept + sm.selection_dropped == len(rows) == 6
    assert sm.selection["vs_planted"]["planted_kept"] + sm.selection["vs_planted"]["planted_dropped"] == 6
    assert res.arrays["d_gen"].shape == (6, 13, 4) and sm.bands_intermediate_steps == 11
    assert float(res.arrays["d_fwd"][:, -1].abs().max()) == 0.0
    assert sm.bands["memorized"]["sim_min"] == max(r.sim_min for r in rows)
    assert sm.bands_overlap_steps_median == pytest.approx(float(torch.tensor(
        [r.bands_overlap_steps for r in rows], dtype=F64).quantile(0.5)))
    assert sm.similarity.startswith("cosine")
