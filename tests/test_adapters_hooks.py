"""Attention-processor hooks and forward hooks on diffusers models: identities, independent oracles, restoration."""

import copy

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers.models.attention_processor import AttnProcessor  # noqa: E402

from diffmem.adapters.diffusers_sd import StableDiffusionAdapter  # noqa: E402
from diffmem.adapters.dit import DiTAdapter  # noqa: E402
from diffmem.attention import AttentionHooks, ForwardHooks, attention  # noqa: E402
from diffusers_tiny import one_thread, tiny_dit_pipeline, tiny_sd_pipeline  # noqa: E402, F401
from roundoff import order_atol  # noqa: E402
from test_attention import Boom, FailAt  # noqa: E402

CROSS = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
SELF = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module")
def sd():
    return StableDiffusionAdapter(tiny_sd_pipeline())


@pytest.fixture(scope="module")
def dit():
    return DiTAdapter(tiny_dit_pipeline())


@pytest.fixture(scope="module")
def inputs(sd):
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 8, 8, generator=g), sd.prompts(["a cat", "the dog"])


def attention_layers(model):
    return attention(model).modules


def processors(model):
    return {n: m.processor for n, m in attention_layers(model).items()}


def test_all_ones_masks_change_nothing_bitwise(sd, dit, inputs):
    x, cond = inputs
    layers = attention_layers(sd.model)
    ref = sd(x, 501.0, cond)
    with AttentionHooks(sd.model, record="all", head_masks={n: torch.ones(m.heads) for n, m in layers.items()},
                        key_masks={n: torch.ones(77, dtype=torch.bool) for n in layers if n.endswith("attn2")}):
        out = sd(x, 501.0, cond)
    assert torch.equal(out.eps_c, ref.eps_c) and torch.equal(out.eps_u, ref.eps_u)
    labels = dit.labels([3, 7])
    ref = dit(x, 501.0, labels)
    with AttentionHooks(dit.model, record="self", head_masks={n: torch.ones(2) for n in attention_layers(dit.model)}):
        out = dit(x, 501.0, labels)
    assert torch.equal(out.eps_c, ref.eps_c) and torch.equal(out.eps_u, ref.eps_u)


@pytest.mark.parametrize("model", ["dit", "sd"])
def test_zero_head_mask_equals_removing_the_heads_output_columns(request, inputs, model):
    adapter = request.getfixturevalue(model)
    x, cond = inputs
    cond = adapter.labels([3, 7]) if model == "dit" else cond
    name, head = (next(iter(attention_layers(adapter.model))), 1) if model == "dit" else (SELF, 2)
    attn = attention_layers(adapter.model)[name]
    mask = torch.ones(attn.heads)
    mask[head] = 0
    with AttentionHooks(adapter.model, head_masks={name: mask}):
        masked = adapter(x, 300.0, cond)
    # oracle: a copy whose output projection ignores that head's slice of the concatenated head outputs
    pruned = copy.deepcopy(adapter)
    d = attn.to_out[0].in_features // attn.heads
    with torch.no_grad():
        attention_layers(pruned.model)[name].to_out[0].weight[:, head * d:(head + 1) * d] = 0
    ref = pruned(x, 300.0, cond)
    torch.testing.assert_close(masked.eps_c, ref.eps_c, rtol=0, atol=order_atol(ref.eps_c))
    torch.testing.assert_close(masked.eps_u, ref.eps_u, rtol=0, atol=order_atol(ref.eps_u))
    assert (masked.eps_c - adapter(x, 300.0, cond).eps_c).abs().max() > 1e-4  # the head mattered


def _captured_qk(attn, calls):
    """q, k per head from the inputs the layer received, computed independently of any processor."""
    h, ctx = calls[-1]
    B, heads = h.shape[0], attn.heads
    q, k = attn.to_q(h), attn.to_k(ctx)
    d = q.shape[-1] // heads
    return (s.view(B, -1, heads, d).transpose(1, 2) for s in (q, k))


def _spy_inputs(attn):
    calls = []

    def spy(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        ctx = kwargs.get("encoder_hidden_states")
        calls.append((h, h if ctx is None else ctx))

    return calls, attn.register_forward_pre_hook(spy, with_kwargs=True)


def test_probabilities_match_an_independent_softmax_and_sum_to_one(sd, inputs):
    x, cond = inputs
    attn = attention_layers(sd.model)[CROSS]
    calls, handle = _spy_inputs(attn)
    try:
        with AttentionHooks(sd.model, record="cross", reduce=None) as full:
            sd(x, 700.0, cond)
    finally:
        handle.remove()
    q, k = _captured_qk(attn, calls)
    with torch.no_grad():
        expect = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1)
    got = full.stacked(CROSS)[0]
    assert got.shape == (4, attn.heads, 64, 77)  # [2B (ε_u rows; ε_c rows), heads, queries, prompt tokens]
    torch.testing.assert_close(got, expect, rtol=0, atol=order_atol(expect))
    for name in full.recorded:
        torch.testing.assert_close(full.stacked(name).sum(-1), torch.ones(full.stacked(name).shape[:-1]))


def test_key_mask_equals_dropping_the_keys(sd, inputs):
    attn = attention_layers(sd.model)[CROSS]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 64, attn.to_q.in_features, generator=g)
    ctx = inputs[1].c
    keep = torch.zeros(77, dtype=torch.bool)
    keep[:5] = True  # e.g. BOS + prompt + first EOS (Ren et al.'s padding mask)
    with torch.no_grad():
        ref = attn(h, encoder_hidden_states=ctx[:, :5])
        with AttentionHooks(sd.model, key_masks={CROSS: keep}, record=[CROSS], reduce=None) as hooks:
            masked = attn(h, encoder_hidden_states=ctx)
    torch.testing.assert_close(masked, ref, rtol=0, atol=order_atol(ref))
    probs = hooks.stacked(CROSS)[0]
    assert bool((probs[..., 5:] == 0).all())
    with pytest.raises(ValueError, match="removes every key"):
        with AttentionHooks(sd.model, key_masks={CROSS: torch.zeros(77, dtype=torch.bool)}), torch.no_grad():
            attn(h, encoder_hidden_states=ctx)


def test_logit_edits(sd, inputs):
    x, cond = inputs
    attn = attention_layers(sd.model)[CROSS]
    with AttentionHooks(sd.model, record=[CROSS], reduce=None) as stock:
        ref = sd(x, 400.0, cond)
    identity = {CROSS: lambda logits, name: logits}
    with AttentionHooks(sd.model, record=[CROSS], reduce=None, logit_edits=identity) as same:
        out = sd(x, 400.0, cond)
    # the explicit softmax path equals the fused kernel up to rounding
    torch.testing.assert_close(out.eps_c, ref.eps_c, rtol=0, atol=order_atol(ref.eps_c))
    torch.testing.assert_close(same.stacked(CROSS), stock.stacked(CROSS), rtol=0, atol=order_atol(stock.stacked(CROSS)))
    # Ren et al.'s re-scaling: multiply the BOS logit by C in the conditional rows only (the batch is [ε_u; ε_c])
    C = 1.25

    def bos_scale(logits, name):
        scale = torch.ones_like(logits)
        scale[logits.shape[0] // 2:, ..., 0] = C
        return logits * scale

    calls, handle = _spy_inputs(attn)
    try:
        with AttentionHooks(sd.model, record=[CROSS], reduce=None, logit_edits={CROSS: bos_scale}) as edited:
            sd(x, 400.0, cond)
    finally:
        handle.remove()
    q, k = _captured_qk(attn, calls)
    with torch.no_grad():
        logits = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        logits[2:, ..., 0] *= C
    expect = logits.softmax(-1)
    torch.testing.assert_close(edited.stacked(CROSS)[0], expect, rtol=0, atol=order_atol(expect))


def test_processors_are_restored_even_after_an_exception(sd, inputs):
    before = processors(sd.model)
    with pytest.raises(Boom), AttentionHooks(sd.model, record="all"):
        assert processors(sd.model) != before
        raise Boom
    assert all(processors(sd.model)[n] is p for n, p in before.items())
    hooks = AttentionHooks(sd.model, record="cross")
    with pytest.raises(Boom):  # as a sampling Hook: installed in on_start, removed in close
        sd.generate(inputs[1], [0, 1], 5, hooks=[hooks, FailAt(2)])
    assert all(processors(sd.model)[n] is p for n, p in before.items())
    assert len(hooks.probs[CROSS]) == 3  # steps 0, 1, 2 ran


def test_attention_hooks_inside_sample_record_one_entry_per_step(sd, inputs):
    hooks = AttentionHooks(sd.model, record="cross")
    tr = sd.generate(inputs[1], [0, 1], 6, guidance=7.5, hooks=[hooks])
    p = hooks.stacked(CROSS)
    assert p.shape == (6, 4, attention_layers(sd.model)[CROSS].heads, 77) and tr.num_recorded == 6
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    assert set(hooks.recorded) == {n for n in attention_layers(sd.model) if n.endswith("attn2")}


def test_bad_hook_requests_fail_loudly(sd, inputs):
    x, cond = inputs
    with pytest.raises(ValueError, match="'nope.attn2'"):
        AttentionHooks(sd.model, head_masks={"nope.attn2": torch.ones(2)})
    with pytest.raises(ValueError, match="'sideways'"):
        AttentionHooks(sd.model, record="sideways")
    with AttentionHooks(sd.model, record=[CROSS]):
        with pytest.raises(ValueError, match="already hooked"):
            AttentionHooks(sd.model, record=[CROSS]).install()
    before = processors(sd.model)
    with pytest.raises(ValueError, match=SELF), AttentionHooks(sd.model, head_masks={SELF: torch.ones(3)}):
        pass
    with AttentionHooks(sd.model, head_masks={SELF: torch.ones(3, 8)}), pytest.raises(ValueError, match=r"\(3, 8\)"):
        sd(x, 10.0, cond)  # the batch size is known only at the call: [2B = 4, heads] expected
    assert processors(sd.model) == before
    pipe = tiny_sd_pipeline()
    pipe.unet.set_attn_processor(AttnProcessor())
    before = processors(pipe.unet)
    with pytest.raises(ValueError, match="AttnProcessor;"):
        AttentionHooks(pipe.unet, record="all").install()
    assert processors(pipe.unet) == before  # nothing was half-installed


# --- forward hooks -----------------------------------------------------------------------------------------------

V_PROJ = CROSS + ".to_v"


def test_capture_outputs_per_step_and_removal(sd, inputs):
    module = sd.model.get_submodule(V_PROJ)
    with ForwardHooks.capture(sd.model, [V_PROJ]) as cap:
        sd.generate(inputs[1], [0, 1], 4, guidance=7.5)
    assert len(cap.outputs[V_PROJ]) == 4 and cap.outputs[V_PROJ][0].shape == (4, 77, module.out_features)
    assert not module._forward_hooks
    with pytest.raises(ValueError, match="'down_blocks.9'"):
        ForwardHooks(sd.model, {"down_blocks.9": lambda m, i, o: None})


def test_zeroing_value_neurons_equals_zeroing_their_weights(sd, inputs):
    # NeMo (Hintersdorf et al., 2024): deactivating to_v output channels by a hook = zeroing those weight rows
    x, cond = inputs
    neurons = torch.tensor([0, 5, 17])

    def deactivate(module, args, out):
        out = out.clone()
        out[..., neurons] = 0
        return out

    with ForwardHooks(sd.model, {V_PROJ: deactivate}):
        hooked = sd(x, 600.0, cond)
    pruned = copy.deepcopy(sd)
    with torch.no_grad():
        pruned.model.get_submodule(V_PROJ).weight[neurons] = 0
    ref = pruned(x, 600.0, cond)
    torch.testing.assert_close(hooked.eps_c, ref.eps_c, rtol=0, atol=order_atol(ref.eps_c))
    assert (hooked.eps_c - sd(x, 600.0, cond).eps_c).abs().max() > 1e-5
    assert not sd.model.get_submodule(V_PROJ)._forward_hooks
