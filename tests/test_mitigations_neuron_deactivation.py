"""NeMo: value-neuron zeroing equals blocking and equals dropping the channels; the search finds the planted set;
the caller's model is untouched."""

import pytest
import torch

from diffmem.mitigations.base import MITIGATIONS, make_mitigation
from diffmem.mitigations.neuron_deactivation import (
    NeMo,
    blocked,
    localize,
    merge,
    value_activations,
    value_layers,
    zero_neurons,
)
from diffmem.types import Cond
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from roundoff import order_atol
from test_training import tiny


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    directory = train_world(tiny(steps=4), tmp_path_factory.mktemp("w") / "t2i", progress=False)
    return world_subject(load_world(directory), steps=4)


def _eps(s, net=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *s.state_shape, generator=g)
    cond = s.cond(s.prompts[:3])
    d = s.denoiser if net is None else s.rebind(net)
    return d(x, torch.tensor([999, 500, 20]), Cond(cond.c, None), uncond=False).eps_c


def test_value_layers_are_the_value_half_of_cross_to_kv(subject):
    layers = value_layers(subject.net)
    assert list(layers) == ["dit.blocks.0.cross"]
    v = layers["dit.blocks.0.cross"]
    assert (v.module, v.offset, v.width) == ("dit.blocks.0.cross.to_kv", 16, 16)


def test_zeroing_equals_blocking_and_dropping_the_channels(subject):
    neurons = {"dit.blocks.0.cross": [1, 5, 12]}
    edited = subject.edited(lambda net: zero_neurons(net, neurons))
    with blocked(subject.net, neurons):
        hooked = _eps(subject)
    assert torch.equal(_eps(edited), hooked)  # the value is exactly 0 either way
    # o_j = Σ p·v_j = 0, so the output projection's column j never contributes: zero it instead
    cols = torch.tensor([1, 5, 12])
    dropped = subject.edited(lambda net: net.dit.blocks[0].cross.to_out.weight.data.index_fill_(1, cols, 0))
    torch.testing.assert_close(_eps(dropped), hooked, rtol=0, atol=order_atol(hooked))
    assert not torch.equal(_eps(subject), hooked)


def test_localize_finds_the_planted_neurons_and_refines_decoys_away(subject):
    prompt = subject.prompts[0]
    acts = value_activations(subject, [prompt])["dit.blocks.0.cross"][0]
    z = torch.zeros_like(acts)
    z[[3, 7]] = 6.0  # the neurons the screen needs blocked
    z[[0, 9]] = 5.5  # decoys selected at θ = 5 and refined away
    stats = {"dit.blocks.0.cross": (acts - z, torch.ones_like(acts))}
    calls = []

    def passes(neurons):
        calls.append(neurons)
        return {3, 7} <= set(neurons.get("dit.blocks.0.cross", []))

    found = localize(subject, prompt, stats, passes)
    assert found.resolved and found.neurons == {"dit.blocks.0.cross": [3, 7]}
    assert found.initial == 4 and found.theta == 5.0 and found.tests == len(calls)


def test_localize_lowers_theta_until_it_passes_and_reports_unresolved(subject):
    prompt = subject.prompts[0]
    acts = value_activations(subject, [prompt])["dit.blocks.0.cross"][0]
    z = torch.zeros_like(acts)
    z[4] = 3.1
    stats = {"dit.blocks.0.cross": (acts - z, torch.ones_like(acts))}
    found = localize(subject, prompt, stats, lambda n: 4 in n.get("dit.blocks.0.cross", []), refine=False)
    # θ = 5, k = 0 selects nothing; θ = 4.75, k = 1 selects the top-1 |z|, neuron 4
    assert found.resolved and (found.theta, found.k, found.tests) == (4.75, 1, 3)
    never = localize(subject, prompt, stats, lambda n: False, theta_min=4.0)
    assert not never.resolved and never.theta == 3.75 and never.tests == 1 + 5  # θ = 5, 4.75, 4.5, 4.25, 4


def test_apply_leaves_the_caller_unchanged_and_records_the_neurons(subject, monkeypatch):
    before = {k: v.clone() for k, v in subject.net.state_dict().items()}
    target = {"dit.blocks.0.cross": [2]}
    monkeypatch.setattr(NeMo, "passes", lambda self, s, p: lambda n: set(n.get("dit.blocks.0.cross", [])) >= {2})
    monkeypatch.setattr("diffmem.mitigations.neuron_deactivation.localize",
                        lambda s, p, stats, passes, **kw: type("L", (), {
                            "neurons": target, "prompt": p.id, "resolved": passes(target), "theta": 5.0, "k": 0,
                            "tests": 1, "initial": 1})())
    planted = [p for p in subject.prompts if p.kind == "planted"]
    edited = make_mitigation("nemo").apply(subject, planted)
    assert all(torch.equal(before[k], v) for k, v in subject.net.state_dict().items())
    assert edited.info["nemo"]["neurons"] == target and edited.info["nemo"]["count"] == 1
    w = edited.net.dit.blocks[0].cross.to_kv
    assert float(w.weight[16 + 2].detach().abs().sum()) == 0 and float(w.bias[16 + 2].detach()) == 0
    assert float(subject.net.dit.blocks[0].cross.to_kv.weight[16 + 2].detach().abs().sum()) > 0


def test_registry_knob_and_errors(subject):
    assert MITIGATIONS["nemo"] is NeMo and NeMo.knob == "theta_min" and NeMo().theta_min in NeMo.grid
    assert merge([{"a": [1, 2]}, {"a": [2, 3], "b": []}]) == {"a": [1, 2, 3]}
    with pytest.raises(ValueError, match="trigger prompts"):
        NeMo().apply(subject, [])
    with pytest.raises(ValueError, match="screen"):
        NeMo(screen="x")


def test_stable_diffusion_value_layers_are_attn2_to_v():
    pytest.importorskip("diffusers")
    from diffusers_tiny import tiny_unet

    unet = tiny_unet()
    layers = value_layers(unet)
    assert layers and all(v.module.endswith("attn2.to_v") and v.offset == 0 for v in layers.values())
    name, v = next(iter(layers.items()))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    neurons = {name: [0, v.width - 1]}
    with torch.no_grad(), blocked(unet, neurons):
        hooked = unet(x, 500, encoder_hidden_states=ctx).sample
    zero_neurons(unet, neurons)
    with torch.no_grad():
        assert torch.equal(unet(x, 500, encoder_hidden_states=ctx).sample, hooked)
