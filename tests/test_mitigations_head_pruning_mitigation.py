"""Head pruning as a permanent mitigation: the pipeline's heads removed in a copy, the caller untouched."""

import pytest
import torch

from diffmem.attention import Head, attention
from diffmem.mitigations.base import MITIGATIONS, make_mitigation
from diffmem.mitigations.head_pruning_mitigation import HeadPruning
from diffmem.mitigations.pruning import select_heads, without_heads
from diffmem.types import Cond
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    cfg = tiny(steps=4).with_overrides(model={"depth": 2, "heads": 4})
    directory = train_world(cfg, tmp_path_factory.mktemp("w") / "t2i", progress=False)
    return world_subject(load_world(directory), steps=4)


def _eps(s):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, *s.state_shape, generator=g)
    return s.denoiser(x, torch.tensor([900, 300]), Cond(s.cond(s.prompts[:2]).c, None), uncond=False).eps_c


@pytest.mark.parametrize("select", ["random", "importance"])
def test_apply_equals_the_pipeline_and_leaves_the_caller(subject, select):
    before = {k: v.clone() for k, v in subject.net.state_dict().items()}
    m = HeadPruning(ratio=0.25, select=select, num_batches=2, batch_size=4)
    edited = m.apply(subject)
    removed = edited.info["head_pruning"]["removed"]
    assert len(removed) == 2  # ⌊0.25 · 8⌋
    expected = select_heads(subject, m.recipe(subject), method=select, ratio=0.25, num_batches=2).removed
    assert removed == expected
    reference = without_heads(subject, [Head(layer, i) for layer, i in removed])
    assert torch.equal(_eps(edited), _eps(reference))
    assert all(torch.equal(before[k], v) for k, v in subject.net.state_dict().items())
    gates = {n: m.head_mask for n, m in attention(edited.net).modules.items() if n.endswith(".attn")}
    assert sum(int((g == 0).sum()) for n, g in gates.items() if n.startswith("dit")) == 2


def test_finetune_changes_the_copy_only(subject, tmp_path):
    before = _eps(subject)
    edited = HeadPruning(ratio=0.25, select="random", finetune_steps=2, batch_size=4).apply(subject)
    assert torch.equal(_eps(subject), before) and not torch.equal(_eps(edited), before)


def test_registry_and_errors():
    assert MITIGATIONS["head-pruning"] is HeadPruning and HeadPruning.knob == "ratio" and 0.2 in HeadPruning.grid
    assert make_mitigation("head-pruning", ratio=0.1).ratio == 0.1
    with pytest.raises(ValueError, match="selection"):
        HeadPruning(select="x")
