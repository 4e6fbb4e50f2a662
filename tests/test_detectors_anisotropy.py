"""Asthana & Belagiannis's anisotropy: the local cosine on hand-made maps; both terms on one x_T; the weights."""

import pytest
import torch
import torch.nn.functional as F

from detector_oracles import oracle_subjects
from diffmem.detectors import make_detector
from diffmem.detectors.anisotropy import local_cosine
from diffmem.detectors.probes import initial_states

EPS64 = torch.finfo(torch.float64).eps


def test_per_position_channel_cosine_on_hand_made_maps():
    # [1, 2 channels, 1, 3]: positions (1, 0)·(1, 0) → 1, (1, 1)·(−1, −1) → −1, (0, 2)·(3, 0) → 0
    a = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]]], dtype=torch.float64)
    b = torch.tensor([[[[1.0, -1.0, 3.0]], [[0.0, -1.0, 0.0]]]], dtype=torch.float64)
    assert local_cosine(a, b).item() == pytest.approx(0.0, abs=4 * EPS64)
    assert local_cosine(a, 2 * a).item() == pytest.approx(1.0, abs=4 * EPS64)
    # a zero vector has cosine 0 (no NaN)
    assert local_cosine(torch.zeros_like(a), b).tolist() == [0.0]


def test_one_channel_maps_degenerate_to_signs_and_patches_restore_a_cosine():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    # per pixel, one channel: the cosine is the sign of the product
    assert torch.equal(local_cosine(a, b), torch.sign(a * b).flatten(1).mean(1))
    # a 3×3 zero-padded patch around any pixel of a 2×2 map holds the whole map at the same offsets for a and b,
    # so every position's cosine is the cosine of the flattened maps
    flat = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    assert float((local_cosine(a, b, patch=3) - flat).abs().max()) <= 8 * EPS64
    # 1-D states use a window along their one axis (7 covers all 4 values from any position); [B, D] is one vector
    assert float((local_cosine(a.flatten(2), b.flatten(2), patch=7) - flat).abs().max()) <= 8 * EPS64
    assert float((local_cosine(a.flatten(1), b.flatten(1)) - flat).abs().max()) <= 8 * EPS64
    with pytest.raises(ValueError, match="odd"):
        local_cosine(a, b, patch=2)


def test_both_terms_are_read_on_the_same_x_T_in_one_call_and_weighted_raw():
    empirical, _, _ = oracle_subjects(k=6)
    prompts, seeds = empirical.prompts, [0, 1]
    det = make_detector("asthana-anisotropy")
    assert det.patch_for(empirical.state_shape) == 3 and det.patch_for((4, 8, 8)) == 1
    cond = empirical.cond([p for p in prompts for _ in seeds])
    norm, cos = det.terms(empirical, cond, seeds * len(prompts))
    # N is the loop's first-step magnitude (Wen), C the cosine at timesteps[-3] on the same pure-noise state
    wen = make_detector("wen-step1").score_generations(empirical, prompts, seeds).flatten()
    assert float((norm - wen).abs().max()) <= 16 * EPS64 * float(wen.max())
    x = initial_states(empirical, seeds * len(prompts))
    low = empirical.denoiser(x, empirical.spec.grid.timesteps[-3], cond)
    ref = local_cosine(low.eps_u, low.eps_c - low.eps_u, patch=3)
    assert float((cos - ref).abs().max()) <= 16 * EPS64
    for g_norm, g_cos in ((1.0, 1.0), (1.0, 2.0), (0.0, 1.0)):
        m = make_detector("asthana-anisotropy", gamma_norm=g_norm, gamma_cos=g_cos)
        got = m.score_generations(empirical, prompts, seeds).flatten()
        assert float((got - (g_norm * norm + g_cos * cos)).abs().max()) <= 16 * EPS64 * (1 + float(norm.max()))
    u_c = make_detector("asthana-anisotropy", mode="u,c", gamma_norm=0.0).score_generations(empirical, prompts, seeds)
    assert float((u_c.flatten() - local_cosine(low.eps_u, low.eps_c, patch=3)).abs().max()) <= 16 * EPS64
    with pytest.raises(ValueError, match="cosine mode"):
        make_detector("asthana-anisotropy", mode="flat")
