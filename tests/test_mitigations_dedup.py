"""Deduplication: exact duplicates collapse to their first row; near-duplicates within the threshold too."""

import torch

from diffmem.mitigations.base import MITIGATIONS
from diffmem.mitigations.dedup import Dedup, deduplicate
from diffmem.mitigations.retraining import fresh_net
from diffmem.subject import TrainingSet
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


def _set(images, rows):
    rows = torch.tensor(rows)
    return TrainingSet(images, rows, rows[:, None] * 10, torch.tensor([0]))


def test_exact_duplicates_collapse_to_their_first_row():
    images = torch.tensor([[0.0], [1.0], [0.0], [2.0], [5.0]]).view(5, 1, 1, 1)  # image 2 equals image 0
    ts = _set(images, [0, 1, 0, 3, 1, 2, 3])
    out, kept = deduplicate(ts)
    assert kept.tolist() == [0, 1, 3] and out.rows.tolist() == [0, 1, 3]
    assert out.cond[:, 0].tolist() == [0, 10, 30]  # each kept row keeps its own caption


def test_near_duplicates_within_threshold():
    images = torch.tensor([[0.0], [0.05], [1.0]]).view(3, 1, 1, 1)
    ts = _set(images, [0, 1, 2, 1])
    assert deduplicate(ts, 0.0)[1].tolist() == [0, 1, 2]
    assert deduplicate(ts, 0.1, metric="l2")[1].tolist() == [0, 2]


def test_world_dedup_retrains_on_distinct_images(tmp_path):
    s = world_subject(load_world(train_world(tiny(steps=2), tmp_path / "w", progress=False)), steps=4)
    out = Dedup().train(s, steps=2)
    assert len(out.training.rows) == len(torch.unique(s.training.rows)) < len(s.training.rows)
    assert out.info["retrained"]["rows_after"] == len(out.training.rows)
    init = fresh_net(s)  # the world's own initialization: the same seed gives the same weights
    assert all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), fresh_net(s).state_dict().values(),
                                                  strict=True))
    assert MITIGATIONS["dedup"] is Dedup and Dedup.knob == "threshold"
