"""Schedules: reference values, exact conversions, and grids identical to diffusers' schedulers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffmem import schedules as S
from diffmem.schedules import DiscreteSchedule, VPSDESchedule, continuous_grid, discrete_grid


def test_sd_reference_values(sd_schedule):
    # SD's scaled-linear table at the timesteps Kim et al. (2025) use (values derived by hand).
    ab = sd_schedule.alpha_bar(torch.tensor([981, 961, 501, 1, 0, 999]))
    expected = [0.005776, 0.007282, 0.27500, 0.998296, 0.99915, 0.004660]
    assert ab.tolist() == pytest.approx(expected, rel=2e-4)


def test_sd_grid_timesteps(sd_grid):
    assert sd_grid.timesteps.tolist() == [981.0 - 20 * k for k in range(50)]
    assert float(sd_grid.alpha_bar_next[-1]) == pytest.approx(0.99915, rel=1e-5)  # set_alpha_to_one=False


def test_vp_sde_schedule():
    s = VPSDESchedule()
    t = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    assert torch.allclose(s.alpha_bar(t), torch.exp(-t))  # alpha_t = e^{-t/2}
    g = continuous_grid(s, 10, t_max=5.0, t_min=1e-3)
    assert len(g) == 10 and float(g.alpha_bar_next[-1]) == pytest.approx(math.exp(-1e-3))
    with pytest.raises(ValueError, match="t_min"):
        continuous_grid(s, 10, t_max=1.0, t_min=2.0)


@given(st.floats(1e-4, 1 - 1e-4), st.integers(0, 2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_conversions_round_trip(alpha_bar, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 8, generator=g, dtype=torch.float64)
    x_t = alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * eps
    assert torch.allclose(S.x0_from_eps(x_t, eps, alpha_bar), x0, atol=1e-8 / alpha_bar)
    assert torch.allclose(S.eps_from_x0(x_t, x0, alpha_bar), eps, atol=1e-8 / (1 - alpha_bar))
    v = S.v_from_eps(x_t, eps, alpha_bar)
    assert torch.allclose(v, alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0, atol=1e-8 / alpha_bar)
    assert torch.allclose(S.eps_from_v(x_t, v, alpha_bar), eps, atol=1e-7 / alpha_bar)
    assert torch.allclose(S.x0_from_v(x_t, v, alpha_bar), x0, atol=1e-7 / alpha_bar)
    sigma = S.sigma_from_alpha_bar(alpha_bar)
    assert S.alpha_bar_from_sigma(sigma) == pytest.approx(alpha_bar)
    assert S.snr(alpha_bar) == pytest.approx(1 / sigma**2)


def test_fractional_t_interpolates_sigma(sd_schedule):
    sig = S.sigma_from_alpha_bar(sd_schedule.alpha_bar(torch.tensor([10.0, 11.0])))
    mid = S.sigma_from_alpha_bar(sd_schedule.alpha_bar(torch.tensor(10.25)))
    assert float(mid) == pytest.approx(float(0.75 * sig[0] + 0.25 * sig[1]))


def test_bad_schedule_inputs(sd_schedule):
    with pytest.raises(ValueError, match="'cosinus'"):
        DiscreteSchedule.named("cosinus")
    with pytest.raises(ValueError, match="'middle'"):
        discrete_grid(sd_schedule, 10, spacing="middle")
    with pytest.raises(ValueError, match="1000.5"):
        sd_schedule.alpha_bar(1000.5)
    with pytest.raises(ValueError, match="num_steps"):
        discrete_grid(sd_schedule, 0)


# --- reference tests against diffusers ---------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")
BETAS = [("linear", {}), ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
         ("squaredcos_cap_v2", {})]


@pytest.mark.parametrize("kind,kw", BETAS)
def test_alphas_cumprod_match_diffusers(kind, kw):
    ref = diffusers.DDPMScheduler(beta_schedule=kind, **kw).alphas_cumprod.double()
    ours = DiscreteSchedule.named(kind, **kw).alphas_cumprod
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps,offset", [(50, 1), (30, 0), (7, 1), (1000, 0)])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_grid_matches_diffusers(spacing, steps, offset, set_alpha_to_one):
    sch = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=set_alpha_to_one)
    sch.set_timesteps(steps)
    g = discrete_grid(DiscreteSchedule.named("scaled_linear"), steps, spacing=spacing, steps_offset=offset,
                      next_rule="ratio", final="one" if set_alpha_to_one else "first")
    assert g.timesteps.tolist() == sch.timesteps.double().tolist()
    ac = sch.alphas_cumprod.double()
    prev = [int(t) - 1000 // steps for t in sch.timesteps]
    ref_next = [float(ac[p]) if p >= 0 else float(sch.final_alpha_cumprod) for p in prev]
    assert g.alpha_bar_next.tolist() == ref_next


@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps", [50, 30, 7])
def test_ddpm_grid_matches_diffusers(spacing, steps):
    sch = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=1)
    sch.set_timesteps(steps)
    g = discrete_grid(DiscreteSchedule.named("linear"), steps, spacing=spacing, steps_offset=1)
    assert g.timesteps.tolist() == sch.timesteps.double().tolist()
    ac = sch.alphas_cumprod.double()
    ref_next = [float(ac[sch.previous_timestep(t)]) if sch.previous_timestep(t) >= 0 else 1.0
                for t in sch.timesteps]
    assert g.alpha_bar_next.tolist() == ref_next


@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps", [50, 30, 7])
def test_euler_grid_matches_diffusers(spacing, steps):
    sch = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           timestep_spacing=spacing, steps_offset=1)
    sch.set_timesteps(steps)
    g = discrete_grid(DiscreteSchedule.named("scaled_linear"), steps, spacing=spacing, steps_offset=1,
                      integer=False)
    assert torch.allclose(g.timesteps, sch.timesteps.double(), rtol=0, atol=1e-4)  # diffusers keeps float32
    assert torch.allclose(g.sigma, sch.sigmas[:-1].double(), rtol=1e-6)
    assert float(sch.sigmas[-1]) == 0.0 and float(g.alpha_bar_next[-1]) == 1.0
