"""Score networks and sweeps of the theory lab (Ye et al. 2025, §6.1): determinism, training, resumable sweeps."""

import dataclasses

import pytest
import torch

from diffmem.mixtures import gmm_world
from diffmem.theory import sweeps
from diffmem.theory.mlp import NetDenoiser, ScoreMLP, TrainConfig, count_params, train_score_net
from diffmem.theory.sampler import SamplerConfig, draw_samples
from diffmem.theory.sweeps import RunSpec, SweepConfig, plan, run_sweep, training_set

TINY = SweepConfig("tiny", dim=4, n_size=(8,), widths=(4, 8), n_grid=(8, 16), dims=(2,), fixed_width=8,
                   n_decay=(8,), decays=(0.0, 1.0), dup=(8, 4), train=TrainConfig(steps=4, batch_size=8), n_samples=6,
                   sampler=SamplerConfig(steps=3))


def test_param_count_formula():
    net = ScoreMLP(dim=5, width=16, depth=3, time_dim=8)
    expected = (5 + 8) * 16 + 16 + 3 * (2 * (16 * 16 + 16) + 8 * 16 + 16) + 16 * 5 + 5
    assert count_params(net) == expected
    assert net(torch.randn(4, 5), torch.rand(4) + 0.1).shape == (4, 5)


def test_training_is_deterministic_and_leaves_global_rng_alone():
    X = gmm_world(3, seed=0).sample(20, seed=1)[0]
    cfg = TrainConfig(width=16, steps=30, batch_size=16, seed=5)
    state = torch.random.get_rng_state()
    a, hist_a = train_score_net(X, cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, hist_b = train_score_net(X, cfg)
    assert hist_a == hist_b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_training_lowers_the_dsm_loss():
    X = gmm_world(2, seed=0).sample(64, seed=1)[0]
    _, hist = train_score_net(X, TrainConfig(width=32, steps=300, batch_size=64, t_sampling="uniform"))
    assert hist[-1] < 0.7 * hist[0]


def test_net_denoiser_samples_through_the_loop():
    net = ScoreMLP(3, width=8, depth=1)
    x, prov = draw_samples(NetDenoiser(net), 3, range(5), SamplerConfig(steps=4), dtype=torch.float32)
    assert x.shape == (5, 3) and bool(torch.isfinite(x).all())
    assert prov["model"]["params"] == count_params(net) and prov["solver"]["name"] == "ddpm"


def test_duplicated_training_set_has_n_minus_m_distinct_rows():
    X = training_set(RunSpec(4, 40, 8, dup=30), TINY)
    assert X.shape == (40, 4) and torch.unique(X, dim=0).shape[0] == 10
    torch.testing.assert_close(X[:10], training_set(RunSpec(4, 10, 8), TINY))


def test_plan_shares_runs_between_panels():
    panels = plan(TINY)
    keys = [s.key for specs in panels.values() for s in specs]
    assert len(set(keys)) < len(keys)  # e.g. the size panel's widest net is the duplication panel's full set
    assert [s.dup for s in panels["dup"]] == [0, 4, 0] and panels["dup"][2].n == 4
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        plan(dataclasses.replace(TINY, dup=(8, 8)))


def test_sweep_resumes_from_finished_rows(tmp_path, monkeypatch):
    first = run_sweep(TINY, tmp_path)
    assert set(first["panels"]) == {"size", "n", "decay", "dup"}
    rows = first["panels"]["size"]
    assert all(0 <= r["memorization_ratio"] <= 1 and r["params"] > 0 for r in rows)
    assert any("duplication" in f for f in first["findings"])

    def boom(*a, **k):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(sweeps, "run_one", boom)
    again = run_sweep(TINY, tmp_path)
    assert again["panels"] == first["panels"]


def test_presets_are_complete():
    for name, cfg in sweeps.PRESETS.items():
        assert cfg.name == name and plan(cfg)
    with pytest.raises(ValueError, match="t_sampling"):
        TrainConfig(t_sampling="beta")
