"""The one attention interface (diffmem.attention) on the world DiT and on diffusers: the same enumeration and
recording on both backends; on the world DiT, edits against independent oracles and restoration."""

import copy

import pytest
import torch

from diffmem.attention import Head, attention
from diffmem.nets.dit import DiT, DiTConfig
from diffmem.sampling.hooks import Hook
from diffmem.text.tokenizer import WordTokenizer
from diffmem.worlds.model import WorldNet
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world
from roundoff import order_atol
from test_training import tiny

TEXT_DIM, TOKENS = 32, 6


def world_text_dit(seed=0):
    """A text-conditional world DiT (2 blocks, 2 heads) with its zero-initialised layers randomised."""
    torch.manual_seed(seed)
    net = DiT(DiTConfig(image_size=8, channels=4, patch=2, width=16, depth=2, heads=2, context_dim=TEXT_DIM))
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    return net.eval()


def world_call(net, B=2):
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(B, 4, 8, 8, generator=g), torch.randn(B, TOKENS, TEXT_DIM, generator=g)
    mask = torch.ones(B, TOKENS, dtype=torch.bool)
    return lambda: net(x, torch.tensor([300] * B), context=ctx, mask=mask)


def pixart_call(B=2):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffmem.adapters.pixart import PixArtAdapter
    from diffusers_tiny import tiny_pixart_pipeline

    adapter = PixArtAdapter(tiny_pixart_pipeline(), max_sequence_length=TOKENS)
    cond = adapter.prompts(["a cat", "the dog"][:B])
    x = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    return adapter.model, lambda: adapter.model_output(x, torch.tensor([300.0] * B), cond.c)


@pytest.mark.parametrize("backend", ["world", "diffusers"])
def test_one_interface_enumerates_and_records_both_backends(backend):
    """Both backends list 2 self- and 2 cross-attention layers of 2 heads, in block order, and record
    probabilities [calls, B, H, Q, K] that sum to 1 over keys: 16 image tokens, TOKENS caption tokens."""
    model, run = (world_text_dit(), None) if backend == "world" else pixart_call()
    run = world_call(model) if backend == "world" else run
    att = attention(model)
    assert att.backend == backend
    selfs, crosses = att.select("self"), att.select("cross")
    assert len(selfs) == len(crosses) == 2 and {layer.heads for layer in att.layers.values()} == {2}
    assert [att.layers[n].kind for n in att.modules] == ["self", "cross"] * 2  # module (= block) order
    assert att.head_counts() == {n: 2 for n in selfs} and att.heads()[:3] == [Head(selfs[0], 0), Head(selfs[0], 1),
                                                                             Head(selfs[1], 0)]
    with torch.no_grad():
        stock = run()
        with att.hooks(record="all", reduce=None) as rec:
            recorded = run()
    assert torch.equal(recorded, stock)  # recording changes nothing, bit for bit
    for name in att.modules:
        p = rec.stacked(name)
        assert p.shape == (1, 2, 2, 16, 16 if name in selfs else TOKENS)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert torch.equal(run(), stock)  # removed again


def test_world_recorded_probabilities_are_the_layers_own():
    """What the interface records equals what flows through the layer's ``probs`` sub-module."""
    net = world_text_dit()
    seen = []
    handle = net.blocks[1].cross.probs.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad(), attention(net).hooks(record=["blocks.1.cross"], reduce=None) as rec:
            world_call(net)()
    finally:
        handle.remove()
    assert torch.equal(rec.stacked("blocks.1.cross")[0], seen[0])


def test_world_edits_match_oracles_and_unit_edits_are_bitwise_identity():
    net = world_text_dit()
    run, att = world_call(net), attention(net)
    with torch.no_grad():
        stock = run()
        ones = {n: torch.ones(2) for n in att.modules}
        keep_all = {n: torch.ones(TOKENS, dtype=torch.bool) for n in att.select("cross")}
        with att.hooks(head_masks=ones, key_masks=keep_all, logit_edits={"blocks.0.attn": lambda x, n: x}):
            assert torch.equal(run(), stock)
        # a zero head gate equals the persistent zero gate (the pruning form of the world DiT)
        gate = torch.tensor([1.0, 0.0])
        with att.hooks(head_masks={"blocks.0.attn": gate}):
            gated = run()
        masked = copy.deepcopy(net)
        attention(masked).remove_heads([Head("blocks.0.attn", 1)], physically=False)
        assert torch.equal(world_call(masked)(), gated) and not torch.equal(gated, stock)
        # a key mask equals attending to the kept keys only
        g = torch.Generator().manual_seed(4)
        h, ctx = torch.randn(2, 16, 16, generator=g), torch.randn(2, TOKENS, TEXT_DIM, generator=g)
        keep = torch.tensor([True, True, False, True, False, False])
        cross = net.blocks[0].cross
        with attention(net).hooks(key_masks={"blocks.0.cross": keep}):
            dropped = cross(h, ctx)
        expect = cross(h, ctx[:, keep])
        torch.testing.assert_close(dropped, expect, rtol=0, atol=order_atol(expect))
        with pytest.raises(ValueError, match="removes every key"), \
                attention(net).hooks(key_masks={"blocks.0.cross": torch.zeros(TOKENS, dtype=torch.bool)}):
            cross(h, ctx)


def test_world_logit_edit_rescales_before_the_softmax():
    net = world_text_dit()
    cross = net.blocks[0].cross
    g = torch.Generator().manual_seed(5)
    h, ctx = torch.randn(2, 16, 16, generator=g), torch.randn(2, TOKENS, TEXT_DIM, generator=g)
    with torch.no_grad(), attention(net).hooks(record=["blocks.0.cross"], reduce=None) as stock:
        cross(h, ctx)
    with torch.no_grad(), attention(net).hooks(record=["blocks.0.cross"], reduce=None,
                                               logit_edits={"blocks.0.cross": lambda x, n: 2 * x}) as edited:
        cross(h, ctx)
    p, q = stock.stacked("blocks.0.cross")[0], edited.stacked("blocks.0.cross")[0]
    expect = (2 * p.log()).softmax(-1)  # softmax(2ℓ) = softmax(2 log p)
    torch.testing.assert_close(q, expect, rtol=0, atol=order_atol(expect))


def test_world_hooks_restore_after_an_exception_and_refuse_double_installs():
    net = WorldNet(DiTConfig(image_size=8, width=16, depth=2, heads=2, context_dim=16),
                   tokenizer=WordTokenizer.from_texts(["a cat", "the dog"]), text_depth=1, text_heads=2)
    att = attention(net)
    assert att.select("text") == ["text_encoder.blocks.0.attn"] and len(att.select("self")) == 2
    with pytest.raises(KeyError), att.hooks(record="all"):
        assert all(m.edit is not None for m in att.modules.values())
        raise KeyError
    assert all(m.edit is None for m in att.modules.values())
    with att.hooks(record=["dit.blocks.0.attn"]), pytest.raises(ValueError, match="already hooked"):
        att.hooks(head_masks={"dit.blocks.1.attn": torch.ones(2), "dit.blocks.0.attn": torch.ones(2)}).install()
    assert all(m.edit is None for m in att.modules.values())  # nothing half-installed, all removed
    with pytest.raises(ValueError, match="'nope'"):
        att.hooks(record=["nope"])
    with pytest.raises(ValueError, match="Linear"):
        attention(torch.nn.Linear(2, 2))



class Boom(Exception):
    pass


class FailAt(Hook):
    """Raises :class:`Boom` at sampling step ``step`` (after that step's forward pass)."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, record):
        if record.i == self.step:
            raise Boom


def test_recording_from_a_subject_through_the_sampling_loop(tmp_path, monkeypatch):
    """The detectors' path: ``attention(subject).hooks(...)`` passed to ``subject.sample`` records one entry per
    step ([2B rows: ε_u; ε_c], heads, prompt tokens) and is removed when the run ends, also by an exception."""
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    subject = world_subject(load_world(tiny(world="digits-t2i", steps=2), progress=False), kinds=["planted"],
                            per_kind=2)
    att = attention(subject)
    rec = att.hooks(record="cross")
    subject.sample(subject.cond(), [0, 1], guidance=4.0, steps=3, hooks=[rec])
    L = subject.cond().c["emb"].shape[1]
    for name in att.select("cross"):
        p = rec.stacked(name)
        assert p.shape == (3, 4, att.layers[name].heads, L)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert all(m.edit is None for m in att.modules.values())
    failing = att.hooks(record="all")
    with pytest.raises(Boom):
        subject.sample(subject.cond(), [0, 1], guidance=4.0, steps=3, hooks=[failing, FailAt(1)])
    assert all(m.edit is None for m in att.modules.values()) and len(failing.probs[att.select("self")[0]]) == 2
