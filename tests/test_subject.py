"""The Subject: sampling through the one loop, prompt selection, edits that never touch the caller's model."""

import pytest
import torch

from diffmem.schedules import DiscreteSchedule
from diffmem.subject import Prompt, Subject, TrainingSet, closed_form_subject
from diffmem.theory.closed_form import GaussianMixtureDenoiser
from diffmem.types import Cond


def _oracle(n=5, d=6):
    train = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return closed_form_subject(GaussianMixtureDenoiser(train, DiscreteSchedule.named("scaled_linear")), train), train


def test_closed_form_subject_reproduces_training_samples_and_is_seeded_per_sample():
    s, train = _oracle()
    traj = s.sample(s.cond(), seeds=[3, 4, 5, 6, 7], guidance=1.0)
    assert traj.x_0.dtype == torch.float64 and traj.x_0.shape == (5, 6)
    # the empirical denoiser is the exact memorizer: every sample lands on a training sample
    assert torch.cdist(traj.x_0, train).min(1).values.max() < 1e-6
    # sample i depends on seed i only: a sub-batch of the seeds gives the same rows (up to float64 round-off of
    # batched matrix products, eps64 · |x| per operation over 20 steps — far below 1e6 · eps64 · |x|)
    part = s.sample(s.select(ids=["1", "2"]).cond(), seeds=[4, 5], guidance=1.0)
    atol = 1e6 * torch.finfo(torch.float64).eps * train.abs().max().item()
    torch.testing.assert_close(part.x_0, traj.x_0[1:3], rtol=0, atol=atol)
    other = s.sample(s.select(ids=["1", "2"]).cond(), seeds=[5, 4], guidance=1.0)
    assert torch.equal(other.x_T, part.x_T.flip(0))  # the draw follows the seed, not the row
    # conditioned on training sample i, the exact memorizer returns sample i whatever the seed
    assert torch.cdist(traj.x_0, train).argmin(1).tolist() == [0, 1, 2, 3, 4]


def test_steps_and_sampler_follow_the_subject():
    s, _ = _oracle()
    assert len(s.grid) == 20 and len(s.with_steps(7).grid) == 7
    traj = s.sample(s.cond(s.prompts[:2]), seeds=[0, 1], guidance=1.0, steps=4)
    assert traj.t.tolist() == s.with_steps(4).grid.timesteps.tolist()


def test_select_by_kind_and_ids_keeps_order_and_refuses_unknown_ids():
    s, train = _oracle()
    kinds = ["planted", "novel", "planted", "novel", "planted"]
    s = Subject(s.name, s.denoiser, None, s.state_shape, s.sampler,
                [Prompt(p.id, p.text, p.cond, k, p.x) for p, k in zip(s.prompts, kinds, strict=True)])
    assert [p.id for p in s.select(kinds=["novel", "planted"], per_kind=2).prompts] == ["1", "3", "0", "2"]
    assert [p.id for p in s.select(ids=["4", "0"]).prompts] == ["4", "0"]
    with pytest.raises(ValueError, match="'9'"):
        s.select(ids=["9"])


def test_duplicate_prompt_ids_and_bad_steps_are_refused():
    s, _ = _oracle()
    with pytest.raises(ValueError, match="occurs more than once"):
        Subject("x", s.denoiser, None, s.state_shape, s.sampler, [s.prompts[0], s.prompts[0]])
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        s.with_steps(0)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)


def _net_subject():
    net = _Net()
    return Subject("net", object(), net, (3,), lambda n: None, rebind=lambda m: ("denoiser of", m)), net


def test_edited_returns_an_edited_copy_and_leaves_the_model_alone():
    s, net = _net_subject()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    e = s.edited(lambda m: setattr(m, "lin", torch.nn.Linear(3, 2)))  # a structural edit
    assert e.net is not net and e.net.lin.out_features == 2 and e.denoiser == ("denoiser of", e.net)
    assert net.lin.out_features == 3 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_editing_restores_the_weights_even_after_an_error():
    s, net = _net_subject()
    before = net.lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), s.editing() as m:
        with torch.no_grad():
            m.lin.weight.zero_()
        raise RuntimeError("boom")
    assert torch.equal(net.lin.weight, before)


def test_training_set_shapes_are_checked():
    with pytest.raises(ValueError, match="as many conditions as rows"):
        TrainingSet(torch.zeros(2, 1), torch.tensor([0, 1]), torch.zeros(3, dtype=torch.long), torch.tensor(0))
    with pytest.raises(ValueError, match="null condition shape"):
        TrainingSet(torch.zeros(2, 1), torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long), torch.tensor(0))


def test_cond_stacks_prompts_and_encode_needs_text_conditioning():
    s, _ = _oracle()
    c = s.cond(s.prompts[1:4])
    assert isinstance(c, Cond) and c.c.tolist() == [1, 2, 3] and c.null.tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="cannot encode new prompt texts"):
        s.encode(["a cat"])
