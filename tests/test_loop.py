"""The sampling-loop contract: recording, seeding, hooks, guidance schedules, interventions, bad input."""

import functools
import math

import pytest
import torch

from diffmem import (
    Cond,
    Constant,
    DynamicTransition,
    Hook,
    Intervention,
    Recorder,
    StaticTransition,
    Trajectory,
    Window,
    ddim_step,
    discrete_grid,
    opposite_guidance,
    sample,
)
from diffmem.denoiser import Denoiser
from diffmem.schedules import DiscreteSchedule, v_from_eps, x0_from_eps
from helpers import TinyNet, class_cond, seeded


@pytest.fixture(scope="module")
def grid():
    return discrete_grid(DiscreteSchedule.named("linear"), 12, spacing="trailing")


def _run(net, grid, seeds, *, solver="ddpm", guidance=3.0, dtype=torch.float32, **kw):
    x_T, noise = seeded(seeds, (16,), dtype)
    return sample(net, x_T, grid, class_cond([s % 4 for s in seeds]), solver=solver, guidance=guidance,
                  noise=noise, **kw)


@pytest.mark.parametrize("solver", ["ddim", "ddpm", functools.partial(ddim_step, eta=0.5)])
def test_recording_does_not_change_results(grid, solver):
    full = _run(TinyNet(), grid, range(4), solver=solver)
    bare = _run(TinyNet(), grid, range(4), solver=solver, recorder=Recorder(keep=()))
    assert torch.equal(full.x_0, bare.x_0)
    assert bare.x_t is None and full.x_t.shape == (12, 4, 16)


def test_results_do_not_depend_on_batch_size(grid):
    seeds = [3, 1, 4, 1000, 5, 9, 2, 6]
    run = functools.partial(_run, grid=grid, dtype=torch.float64)
    by8 = run(TinyNet(), seeds=seeds)
    by3 = [run(TinyNet(), seeds=seeds[i:i + 3]) for i in range(0, 8, 3)]
    by1 = [run(TinyNet(), seeds=[s]) for s in seeds]
    # the noise is bitwise the same; the model's matmuls may block differently per batch size (float64 makes
    # that rounding invisible at 1e-12), so only the model can make a batch of 8 differ from 8 batches of 1
    assert torch.equal(torch.cat([t.x_T for t in by1]), by8.x_T)
    for other in (torch.cat([t.x_0 for t in by3]), torch.cat([t.x_0 for t in by1])):
        torch.testing.assert_close(other, by8.x_0, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([t.x_t for t in by1], 1), by8.x_t, rtol=0, atol=1e-12)
    assert by8.provenance.seeds == seeds


def test_same_seed_same_result_different_seed_different(grid):
    a, b, c = (_run(TinyNet(), grid, s) for s in ([7], [7], [8]))
    assert torch.equal(a.x_0, b.x_0) and not torch.allclose(a.x_0, c.x_0)


def test_one_batched_forward_per_step(grid):
    net = TinyNet()
    _run(net, grid, range(3), guidance=7.5)
    assert net.calls == len(grid)
    net = TinyNet()
    tr = _run(net, grid, range(3), guidance=1.0)  # unguided: ε_u is never evaluated
    assert net.calls == len(grid) and bool(tr.eps_u.isnan().all()) and bool(tr.d_t.isnan().all())
    assert torch.equal(tr.eps, tr.eps_c)


def test_recorded_fields_are_consistent(grid):
    tr = _run(TinyNet(), grid, range(3), solver="ddim", guidance=5.0)
    ab = tr.alpha_bar.float().view(-1, 1, 1)
    torch.testing.assert_close(tr.eps, tr.eps_u + 5.0 * (tr.eps_c - tr.eps_u))
    torch.testing.assert_close(tr.x0_hat, x0_from_eps(tr.x_t, tr.eps, ab))
    torch.testing.assert_close(tr.d_t, (tr.eps_c - tr.eps_u).norm(dim=-1).double())
    assert torch.equal(tr.x_t[0], tr.x_T) and bool((tr.w == 5.0).all())
    assert torch.equal(tr.t, grid.timesteps) and torch.equal(tr.alpha_bar_next, grid.alpha_bar_next)


def test_recorder_thinning_dtype_and_subset(grid):
    full = _run(TinyNet(), grid, range(2))
    thin = _run(TinyNet(), grid, range(2), recorder=Recorder(keep=("x_t", "eps_c"), every=5, dtype=torch.float16))
    assert thin.steps.tolist() == [0, 5, 10, 11]
    assert thin.x_t.dtype == torch.float16 and thin.eps_u is None and thin.x0_hat is None
    assert torch.equal(thin.x_t, full.x_t[thin.steps].half()) and torch.equal(thin.w, full.w[thin.steps])
    assert torch.equal(thin.x_0, full.x_0)


def test_bad_recorder_settings():
    with pytest.raises(ValueError, match="'x0'"):
        Recorder(keep=("x0",))
    with pytest.raises(ValueError, match="0"):
        Recorder(every=0)


def test_trajectory_round_trip(grid, tmp_path):
    tr = _run(TinyNet(), grid, [4, 2], guidance=Window(w=6.0, start=0.25, stop=0.75))
    tr.save(tmp_path)
    back = Trajectory.load(tmp_path)
    for name in ("steps", "t", "w", "d_t", "x_T", "x_0", "x_t", "eps_c", "eps_u", "eps", "x0_hat"):
        torch.testing.assert_close(getattr(back, name), getattr(tr, name), rtol=0, atol=0, equal_nan=True)
    assert back.provenance == tr.provenance
    assert back.provenance.guidance == {"kind": "Window", "w": 6.0, "start": 0.25, "stop": 0.75, "w_outside": 1.0}
    assert back.provenance.seeds == [4, 2] and back.provenance.solver["name"] == "ddpm"


# --- the denoiser contract -------------------------------------------------------------------------------------------

class Native(Denoiser):
    """Returns a known ε through any prediction type, to test the exact conversion in the adapter."""

    def __init__(self, prediction_type):
        self.prediction_type, self.schedule = prediction_type, DiscreteSchedule.named("cosine")

    @staticmethod
    def eps(x_t, t, c):
        return torch.sin(x_t * (1 + c[:, None])) + t[:, None] / 1000

    def model_output(self, x_t, t, c):
        ab = self.schedule.alpha_bar(t).view(-1, 1)
        e = self.eps(x_t, t, c)
        return {"epsilon": e, "v_prediction": v_from_eps(x_t, e, ab), "sample": x0_from_eps(x_t, e, ab)}[
            self.prediction_type]


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_convert_exactly(kind):
    x_t = torch.randn(5, 8, dtype=torch.float64)
    t = torch.tensor([1, 200, 500, 900, 999])
    cond = class_cond([0, 1, 2, 3, 0])
    p = Native(kind)(x_t, t, cond)
    torch.testing.assert_close(p.eps_c, Native.eps(x_t, t, cond.c), rtol=0, atol=1e-9)
    torch.testing.assert_close(p.eps_u, Native.eps(x_t, t, cond.null), rtol=0, atol=1e-9)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="'flow'"):
        Native("flow")(torch.randn(1, 8), 10, class_cond([0]))


# --- guidance schedules ---------------------------------------------------------------------------------------------

def test_window_and_static_weights_per_step(grid):
    tr = _run(TinyNet(), grid, range(2), guidance=Window(w=6.0, start=0.25, stop=0.5, w_outside=2.0))
    expect = [6.0 if 0.25 <= i / 12 < 0.5 else 2.0 for i in range(12)]
    assert tr.w[:, 0].tolist() == expect
    tr = _run(TinyNet(), grid, range(2), guidance=opposite_guidance(w=7.5, tau=500, s=2.0))
    assert tr.w[:, 1].tolist() == [-2.0 if t > 500 else 7.5 for t in grid.timesteps.tolist()]
    # w = 1 outside the window skips ε_u there (NaN rows) and keeps ε_c bit for bit
    tr = _run(TinyNet(), grid, range(2), guidance=Window(w=4.0, start=0.5, stop=1.0))
    assert bool(tr.eps_u[:6].isnan().all()) and not bool(tr.eps_u[6:].isnan().any())
    assert torch.equal(tr.eps[:6], tr.eps_c[:6])
    with pytest.raises(ValueError, match="stop=1.5"):
        Window(start=0.2, stop=1.5)
    assert StaticTransition(w=3, tau=100, w1=0).weight(0, 10, 100.0, None) == 3


class Scripted(Denoiser):
    """ε_u = 0 and ε_c = d_i·e_1 at step i: the guidance gap d_t follows a script per sample."""

    prediction_type, name = "epsilon", "scripted"

    def __init__(self, script, grid):
        self.script, self.schedule = torch.tensor(script, dtype=torch.float32), DiscreteSchedule.named("linear")
        self.index = {int(t): i for i, t in enumerate(grid.timesteps.tolist())}

    def model_output(self, x_t, t, c):
        i = self.index[int(t[0])]
        out = torch.zeros_like(x_t)
        out[:, 0] = self.script[i][c % 100] * (c < 100)  # label c ≥ 100 is the null branch
        return out


def test_dynamic_transition_switches_after_first_local_minimum(grid):
    # per sample (columns): the first local minimum of d is at step 2, never, and step 4
    script = [[5, 9, 1], [4, 8, 2], [3, 7, 1.5], [4, 6, 1.2], [2, 5, 1.0], [3, 4, 2.0],
              [1, 3, 3], [1, 2, 3], [1, 1.5, 3], [1, 1.2, 3], [1, 1.1, 3], [1, 1.0, 3]]
    den = Scripted(script, grid)
    x_T, _ = seeded(range(3), (4,))
    cond = Cond(torch.arange(3), torch.arange(3) + 100)
    tr = sample(den, x_T, grid, cond, guidance=DynamicTransition(w=7.5, w_early=-1.0))
    torch.testing.assert_close(tr.d_t, torch.tensor(script, dtype=torch.float64))
    # the minimum at step j is known once d_{j+1} is seen, so the switch takes effect at step j + 1
    for b, j in enumerate([2, None, 4]):
        expect = [-1.0 if j is None or i <= j else 7.5 for i in range(12)]
        assert tr.w[:, b].tolist() == expect, b


# --- hooks and interventions -----------------------------------------------------------------------------------------

class Boom(Exception):
    pass


class ModuleDenoiser(Denoiser, torch.nn.Module):
    prediction_type, name = "epsilon", "module"

    def __init__(self, fail_at=None):
        torch.nn.Module.__init__(self)
        self.schedule, self.lin = DiscreteSchedule.named("linear"), torch.nn.Linear(4, 4)
        self.fail_at, self.n = fail_at, 0

    def model_output(self, x_t, t, c):
        self.n += 1
        if self.n == self.fail_at:
            raise Boom
        return self.lin(x_t)

    __call__ = Denoiser.__call__


class ActivationTap(Hook):
    """A hook that registers a torch forward hook and removes it in ``close``."""

    def __init__(self, module):
        self.module, self.seen = module, []

    def on_start(self, x_T, cond, grid):
        self.handle = self.module.register_forward_hook(lambda m, i, o: self.seen.append(o.shape))

    def close(self):
        self.handle.remove()


def test_hooks_are_removed_after_an_exception(grid):
    den = ModuleDenoiser(fail_at=3)
    tap = ActivationTap(den.lin)
    x_T, _ = seeded([0], (4,))
    with pytest.raises(Boom):
        sample(den, x_T, grid, class_cond([0]), guidance=1.0, hooks=[tap])
    assert len(tap.seen) == 2 and not den.lin._forward_hooks
    den = ModuleDenoiser()
    tap = ActivationTap(den.lin)
    sample(den, x_T, grid, class_cond([0]), guidance=1.0, hooks=[tap])
    assert len(tap.seen) == len(grid) and not den.lin._forward_hooks


class StepCounter(Hook):
    def __init__(self):
        self.steps, self.ended = [], None

    def on_step(self, record):
        self.steps.append((record.i, record.t))

    def on_end(self, trajectory):
        self.ended = trajectory


def test_hook_sees_every_step_and_the_result(grid):
    h = StepCounter()
    tr = _run(TinyNet(), grid, [1], hooks=[h])
    assert h.steps == list(enumerate(grid.timesteps.tolist())) and h.ended is tr
    with pytest.raises(Exception, match="frozen|cannot assign"):
        tr.x_0 = None


class HalveWeightLate(Intervention):
    def __init__(self, after):
        self.after = after

    def edit_weight(self, i, t, w, d_hist):
        assert d_hist.shape == (i + 1, w.shape[0])
        return w / 2 if i >= self.after else w


class Shrink(Intervention):
    def edit_x_T(self, x_T):
        return 0.5 * x_T


def test_interventions_edit_weight_and_latent(grid):
    tr = _run(TinyNet(), grid, [0, 1], guidance=4.0, interventions=[HalveWeightLate(6), Shrink()])
    assert tr.w[:, 0].tolist() == [4.0] * 6 + [2.0] * 6
    ref, _ = seeded([0, 1], (16,))
    assert torch.equal(tr.x_T, 0.5 * ref)
    assert tr.provenance.interventions == [{"kind": "HalveWeightLate", "after": 6}, {"kind": "Shrink"}]


class BadShape(Intervention):
    def edit_x_t(self, i, t, x_t):
        return x_t[:, :3]


def test_intervention_must_keep_shape(grid):
    with pytest.raises(ValueError, match=r"edit_x_t .*\(1, 16\).*\(1, 3\)"):
        _run(TinyNet(), grid, [0], interventions=[BadShape()])


# --- bad input -------------------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_value(grid):
    x_T, noise = seeded(range(3), (16,))
    with pytest.raises(ValueError, match="batch size 3.*batch size 2"):
        sample(TinyNet(), x_T, grid, class_cond([0, 1]))
    with pytest.raises(ValueError, match="'7.5'"):
        sample(TinyNet(), x_T, grid, class_cond([0, 1, 2]), guidance="7.5")
    bad = x_T.clone()
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"NaN.*\[1\]"):
        sample(TinyNet(), bad, grid, class_cond([0, 1, 2]))
    with pytest.raises(ValueError, match="'quadratic'"):
        discrete_grid(DiscreteSchedule.named("linear"), 10, spacing="quadratic")
    with pytest.raises(ValueError, match="nan"):
        Constant(w=math.nan)
    with pytest.raises(ValueError, match="pass noise"):
        sample(TinyNet(), x_T, grid, class_cond([0, 1, 2]), solver="ddpm")
    with pytest.raises(ValueError, match="'heun'"):
        sample(TinyNet(), x_T, grid, class_cond([0, 1, 2]), solver="heun")
    with pytest.raises(ValueError, match="2 seeds.*batch size 3"):
        sample(TinyNet(), x_T, grid, class_cond([0, 1, 2]), solver="ddpm", noise=seeded([0, 1], (16,))[1])
