"""Early stopping: the monitor stops at the first check whose signal reaches the threshold, with that step's
weights; a monitor that never fires reproduces plain retraining."""

import pytest
import torch

from diffmem.mitigations.base import MITIGATIONS
from diffmem.mitigations.memorization_monitor import MemorizationMonitor
from diffmem.mitigations.retraining import recipe, retrain
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    directory = train_world(tiny(steps=2), tmp_path_factory.mktemp("w") / "t2i", progress=False)
    return world_subject(load_world(directory), steps=4)


def _same(a, b):
    a, b = a.net.state_dict(), b.net.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_stops_at_the_first_firing_check_deterministically(subject):
    cfg = recipe(subject, steps=6, checkpoint_every=2)
    never = MemorizationMonitor(criterion="loss_gap", threshold=float("inf"), every=2).train(subject, cfg=cfg)
    record = never.info["retrained"]
    assert record["stopped_at"] is None and [h["step"] for h in record["history"]] == [2, 4, 6]
    assert _same(never, retrain(subject, subject.training, cfg, name="plain"))
    signals = [h["signal"] for h in record["history"]]
    k = max(range(3), key=lambda i: signals[i])  # the first check at which the largest signal appears fires
    k = signals.index(signals[k])
    fired = MemorizationMonitor(criterion="loss_gap", threshold=signals[k], every=2).train(subject, cfg=cfg)
    assert fired.info["retrained"]["stopped_at"] == 2 * (k + 1) == fired.info["retrained"]["steps"]
    assert [h["signal"] for h in fired.info["retrained"]["history"]] == signals[:k + 1]
    assert _same(fired, retrain(subject, subject.training, cfg.__class__(**{**cfg.to_dict(), "steps": 2 * (k + 1)}),
                                name="short"))


def test_copy_rate_signal_and_errors(subject):
    m = MemorizationMonitor(n_prompts=2, n_seeds=2, steps=4)
    value = m.signal(subject, subject.net, subject.training)
    assert 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="kinds"):
        MemorizationMonitor(kinds=("none",)).signal(subject, subject.net, subject.training)
    with pytest.raises(ValueError, match="criterion"):
        MemorizationMonitor(criterion="x")
    assert MITIGATIONS["early-stopping"] is MemorizationMonitor and MemorizationMonitor.knob == "threshold"
