"""Wen et al.'s filter: exactly the rows above the threshold go; checks that drop nothing reproduce plain
retraining bit for bit."""

import pytest
import torch

from diffmem.mitigations.base import MITIGATIONS
from diffmem.mitigations.magnitude_filter import MagnitudeFilter, caption_magnitudes, filter_rows
from diffmem.mitigations.retraining import recipe, retrain
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    directory = train_world(tiny(steps=4), tmp_path_factory.mktemp("w") / "t2i", progress=False)
    return world_subject(load_world(directory), steps=4)


def test_filter_removes_exactly_the_rows_above_threshold(subject):
    ts = subject.training
    mags = caption_magnitudes(subject, subject.net, ts, n_seeds=2)
    _, inverse = torch.unique(ts.cond, dim=0, return_inverse=True)
    assert all(len(torch.unique(mags[inverse == k])) == 1 for k in range(int(inverse.max()) + 1))  # per caption
    threshold = float(mags.median())
    kept, keep = filter_rows(ts, mags, threshold)
    assert torch.equal(keep, mags <= threshold) and 0 < int(keep.sum()) < len(keep)
    assert torch.equal(kept.rows, ts.rows[mags <= threshold]) and torch.equal(kept.cond, ts.cond[mags <= threshold])
    with pytest.raises(ValueError, match="drops every"):
        filter_rows(ts, mags, float(mags.min()) / 2)


def test_magnitude_is_the_first_step_eps_difference(subject):
    ts = subject.training
    mags = caption_magnitudes(subject, subject.net, ts, n_seeds=3, seed=5)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn((3, *subject.state_shape), generator=g)
    cond = subject.net.condition(ts.cond[:1].expand(3, -1))
    null = subject.net.condition(ts.null[None].expand(3, -1))
    t = subject.grid.timesteps[0]
    with torch.no_grad():
        d = subject.net(x_T, t.expand(3), cond) - subject.net(x_T, t.expand(3), null)
    expected = d.double().flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(mags[0], expected, rtol=1e-5, atol=0)


def test_checks_that_drop_nothing_equal_plain_retraining_and_drops_are_recorded(subject):
    cfg = recipe(subject, steps=4, checkpoint_every=2)
    plain = retrain(subject, subject.training, cfg, name="plain")
    kept_all = MagnitudeFilter(threshold=float("inf"), every=2).train(subject, cfg=cfg)
    a, b = plain.net.state_dict(), kept_all.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["dropped"] for h in kept_all.info["retrained"]["history"]] == [0, 0]
    mags = caption_magnitudes(subject, subject.net, subject.training, n_seeds=4)
    some = MagnitudeFilter(threshold=float(mags.median()), every=2).train(subject, cfg=cfg)
    history = some.info["retrained"]["history"]
    assert [h["step"] for h in history] == [2, 4] and len(some.training.rows) == history[-1]["rows"]
    assert MITIGATIONS["magnitude-filter"] is MagnitudeFilter and MagnitudeFilter.knob == "threshold"
