"""Ren et al.'s cross-attention edit: C = 1 with nothing masked is plain sampling; the edit scales only the
conditional BOS logits and masks keys in both branches; the hooks are gone after the run."""

import pytest
import torch

from diffmem.attention import attention
from diffmem.mitigations.attention_edit import RenAttention, prompt_lengths, ren_logit_edit
from mitigation_subjects import snapshot, tiny_text_subject, unchanged


@pytest.fixture(scope="module")
def subject():
    return tiny_text_subject()[1]


def test_scale_one_and_an_all_true_mask_are_bitwise_plain_sampling(subject):
    cond, seeds = subject.cond(subject.prompts[:3]), [0, 1, 2]
    for mask in (False, True):  # world prompts mask their padding already: Ren's mask keeps every seen key
        traj = RenAttention(bos_logit_scale=1.0, mask=mask).sample(subject, cond, seeds, guidance=5.0)
        assert torch.equal(traj.x_0, subject.sample(cond, seeds, guidance=5.0).x_0)


def test_the_edit_scales_conditional_bos_logits_and_masks_both_branches():
    g = torch.Generator().manual_seed(0)
    keep = torch.tensor([[True, True, False], [True, True, True]])
    logits = torch.randn(4, 2, 5, 3, generator=g, dtype=torch.float64)  # [ε_u rows; ε_c rows]
    out = ren_logit_edit(keep, 1.25)(logits, "layer")
    assert torch.equal(out[:2, ..., 0], logits[:2, ..., 0])  # unconditional BOS untouched
    assert torch.equal(out[2:, ..., 0], logits[2:, ..., 0] * 1.25)
    assert bool(torch.isinf(out[[0, 2], ..., 2]).all()) and torch.equal(out[[1, 3], ..., 1:], logits[[1, 3], ..., 1:])
    unguided = ren_logit_edit(keep, 1.25)(logits[2:], "layer")  # weight-1 steps: ε_c rows only
    assert torch.equal(unguided, out[2:])
    with pytest.raises(ValueError, match="model batch"):
        ren_logit_edit(keep, 1.25)(logits[:3], "layer")


def test_rescaling_changes_the_run_and_leaves_no_hook_behind(subject):
    cond, seeds, saved = subject.cond(subject.prompts[:2]), [0, 1], snapshot(subject)
    assert torch.equal(prompt_lengths(subject, cond), cond.c["mask"].sum(1))
    traj = RenAttention(bos_logit_scale=1.35).sample(subject, cond, seeds, guidance=5.0)
    assert not torch.equal(traj.x_0, subject.sample(cond, seeds, guidance=5.0).x_0)
    att = attention(subject.net)
    assert all(att.modules[n].edit is None for n in att.modules) and unchanged(subject, saved)
    assert att.select("cross")  # the world DiT has cross-attention layers to edit
