"""Caption randomization: which rows change and how, deterministically; retraining leaves the caller alone."""

import pytest
import torch

from diffmem.mitigations.base import MITIGATIONS
from diffmem.mitigations.caption_random import CaptionRandomization, randomize_captions
from diffmem.subject import TrainingSet
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny

PAD, BOS, EOS = 0, 1, 2


def _rows():
    cond = torch.tensor([[BOS, 10, 11, EOS, PAD, PAD, PAD, PAD]] * 6 + [[BOS, 12, 13, 14, EOS, PAD, PAD, PAD]] * 4)
    return TrainingSet(torch.zeros(3, 1, 2, 2), torch.tensor([0] * 6 + [1] * 4), cond,
                       torch.tensor([BOS, EOS, PAD, PAD, PAD, PAD, PAD, PAD]))


def _content(row):
    return [int(t) for t in row if int(t) > 2]


def test_p0_changes_nothing_and_p1_replaces_every_caption():
    ts = _rows()
    same, changed = randomize_captions(ts, 0.0)
    assert torch.equal(same.cond, ts.cond) and not changed.any()
    new, changed = randomize_captions(ts, 1.0, "replace", n_tokens=4, seed=3)
    assert changed.all()
    for row in new.cond:
        assert row[0] == BOS and row[5] == EOS and (row[6:] == PAD).all()
        assert len(_content(row)) == 4 and set(_content(row)) <= {10, 11, 12, 13, 14}
    again, _ = randomize_captions(ts, 1.0, "replace", n_tokens=4, seed=3)
    assert torch.equal(again.cond, new.cond)


def test_insert_keeps_the_words_in_order_and_mix_draws_existing_captions():
    ts = _rows()
    new, _ = randomize_captions(ts, 1.0, "insert", n_tokens=2, seed=0)
    for old, row in zip(ts.cond, new.cond, strict=True):
        words, it = _content(row), iter(_content(row))
        assert len(words) == len(_content(old)) + 2 and all(w in it for w in _content(old))  # a subsequence
    mixed, _ = randomize_captions(ts, 1.0, "mix", seed=0)
    assert all(any(torch.equal(r, c) for c in ts.cond) for r in mixed.cond)


def test_class_labels_get_another_class():
    ts = TrainingSet(torch.zeros(4, 1, 2, 2), torch.arange(4), torch.tensor([0, 1, 2, 1]), torch.tensor(10))
    new, changed = randomize_captions(ts, 1.0, seed=1)
    assert changed.all() and (new.cond != ts.cond).all() and set(new.cond.tolist()) <= {0, 1, 2}


def test_fraction_follows_p():
    ts = _rows()
    ts = TrainingSet(ts.images, ts.rows.repeat(100), ts.cond.repeat(100, 1), ts.null)
    _, changed = randomize_captions(ts, 0.1, seed=0)
    assert abs(float(changed.double().mean()) - 0.1) < 0.03  # 1000 Bernoulli(0.1) draws: sd 0.0095


def test_train_returns_a_new_subject(tmp_path):
    s = world_subject(load_world(train_world(tiny(steps=2), tmp_path / "w", progress=False)), steps=4)
    before = {k: v.clone() for k, v in s.net.state_dict().items()}
    out = CaptionRandomization(p=0.5).train(s, steps=2)
    assert out.net is not s.net and out.info["retrained"]["steps"] == 2 and out.info["retrained"]["changed_rows"] > 0
    assert all(torch.equal(before[k], v) for k, v in s.net.state_dict().items())
    assert not torch.equal(out.training.cond, s.training.cond)
    # the new network has its own text encoder: the prompts are re-encoded by it
    p = out.prompts[0]
    assert torch.equal(p.cond.c["emb"], out.encode([p.text]).c["emb"])
    assert not torch.equal(p.cond.c["emb"], s.prompts[0].cond.c["emb"])
    assert MITIGATIONS["caption-randomization"] is CaptionRandomization and CaptionRandomization.knob == "p"
    with pytest.raises(ValueError, match="mode"):
        CaptionRandomization(mode="x")
