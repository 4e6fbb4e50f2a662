"""Re-trigger audit: zero budget changes nothing, the budget bounds the perturbation, the probe lowers its own
objective; the paired copy rule on closed-form cases."""

import pytest
import torch

from diffmem.mitigations.retrigger import copy_rates, paired_copies, retrigger_audit
from diffmem.subject import Prompt
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    directory = train_world(tiny(steps=4), tmp_path_factory.mktemp("w") / "t2i", progress=False)
    return world_subject(load_world(directory), steps=4)


def test_paired_copies_needs_the_ratio_and_the_paired_image():
    refs = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.tensor([[0.5, 0.0], [0.5, 0.0], [5.0, 5.0]])
    assert paired_copies(x, refs, None).tolist() == [True, True, False]
    assert paired_copies(x, refs, refs[[0, 1, 0]]).tolist() == [True, False, False]


def test_zero_budget_changes_nothing(subject):
    prompts = [p for p in subject.prompts if p.x is not None][:2]
    audit = retrigger_audit(subject, prompts[:1], controls=prompts[1:], budget=0.0, steps=3, seeds=[0, 1])
    assert audit.copy_after == audit.copy_before and audit.delta_rel == [0.0, 0.0]
    assert audit.loss_after == audit.loss_before and audit.roles == ["trigger", "control"]
    before = copy_rates(subject, prompts, [0, 1])
    assert audit.copy_before == before.tolist()


@pytest.mark.parametrize("objective", ["dori", "x0"])
def test_budget_bounds_the_perturbation_and_the_probe_lowers_its_objective(subject, objective):
    prompt = [p for p in subject.prompts if p.kind == "planted"][0]
    free = retrigger_audit(subject, [prompt], objective=objective, budget=None, steps=8, lr=0.05, seeds=[0])
    assert free.loss_after[0] < free.loss_before[0] and free.delta_rel[0] > 0
    bounded = retrigger_audit(subject, [prompt], objective=objective, budget=0.01, steps=8, lr=0.05, seeds=[0])
    assert 0 < bounded.delta_rel[0] <= 0.01 * (1 + 1e-5)
    summary = bounded.summary()
    assert summary["trigger_copy_before"] == bounded.copy_before[0] and summary["budget"] == 0.01


def test_refuses_prompts_without_an_image_and_class_conditions(subject):
    p = subject.prompts[0]
    with pytest.raises(ValueError, match="paired training image"):
        retrigger_audit(subject, [Prompt("n", "novel", p.cond, "novel")])
    with pytest.raises(ValueError, match="objective"):
        retrigger_audit(subject, [p], objective="nope")
    labels = Prompt("c", "three", type(p.cond)(torch.tensor([3]), torch.tensor([10])), "planted", p.x)
    with pytest.raises(ValueError, match="float embedding"):
        retrigger_audit(subject, [labels], steps=1)
