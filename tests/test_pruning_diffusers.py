"""Head pruning of Ye et al. (2025, Algorithms 1-2) on tiny random diffusers DiT and PixArt transformers: gates,
gradients, physical removal, save/load, fine-tuning, data subjects and the ``--model`` tables."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffmem.adapters.dit import DiTAdapter  # noqa: E402
from diffmem.adapters.pixart import PixArtAdapter  # noqa: E402
from diffmem.adapters.subject_data import data_subject  # noqa: E402
from diffmem.attention import Head, attention  # noqa: E402
from diffmem.attention.diffusers import NoHeadsProcessor  # noqa: E402
from diffmem.mitigations import prune_table  # noqa: E402
from diffmem.mitigations.diffusers_heads import load_pruned, save_pruned  # noqa: E402
from diffmem.mitigations.head_pruning import accumulate_scores, prune_count, random_heads  # noqa: E402
from diffmem.mitigations.prune_backends import diffusers_inputs, pixel_features  # noqa: E402
from diffmem.mitigations.pruning import alpha_bar, generate, scoring_loss, trainable, without_heads  # noqa: E402
from diffmem.subject import TrainingSet  # noqa: E402
from diffmem.training.config import TrainConfig  # noqa: E402
from diffmem.training.trainer import draw_batch, eps_loss, fit  # noqa: E402
from diffusers_tiny import (  # noqa: E402, F401
    DIT_BETAS,
    _perturb,
    make_scheduler,
    one_thread,
    tiny_pixart_pipeline,
    tiny_vae,
)
from roundoff import order_atol  # noqa: E402

CLASSES = 10
L0, L1 = "transformer_blocks.0.attn1", "transformer_blocks.1.attn1"


def dit_pipe(heads=4, seed=0):
    """DiTPipeline: 2 layers x ``heads`` heads of dim 8, learned σ, 10 classes (+ null row), 16 px images."""
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=8, in_channels=4,
                                        out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                        num_embeds_ada_norm=CLASSES).eval()
    _perturb(transformer, seed)
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(seed),
                       scheduler=make_scheduler("ddim", betas=DIT_BETAS, steps_offset=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(n=6, seed=0):
    return np.random.default_rng(seed).random((n, 16, 16, 3)).astype(np.float32)


def dit_subject(adapter, n=6, dtype=None, seed=0):
    """A data subject of ``adapter`` (labels cycling over 3 classes); with ``dtype``, training latents drawn
    directly in that dtype (the loss sees only x0 and labels)."""
    subject, _ = data_subject(adapter, images(n, seed), labels=np.arange(n) % 3)
    if dtype is None:
        return subject
    x0 = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ts = subject.training
    return replace(subject, training=TrainingSet(x0, ts.rows, ts.cond, ts.null))


def recipe(adapter, **kw):
    return TrainConfig(**{"batch_size": 3, "p_uncond": 0.3, "num_train_timesteps":
                          adapter.schedule.num_train_timesteps, **kw})


@pytest.fixture(scope="module")
def dit64():
    adapter = DiTAdapter(dit_pipe())
    adapter.model.to(torch.float64)
    return adapter


def inputs(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.tensor([20.0, 400.0, 900.0][:B]), torch.tensor([1, 7, 10][:B])


def processors(model):
    return {n: a.processor for n, a in attention(model).modules.items()}


def test_layers_are_self_attention_only():
    assert list(attention(dit_pipe().transformer).head_counts()) == [L0, L1]
    att = attention(tiny_pixart_pipeline().transformer)
    assert list(att.head_counts()) == [L0, L1] and all(n.endswith("attn2") for n in att.select("cross"))
    with pytest.raises(ValueError, match="Linear"):
        attention(torch.nn.Linear(2, 2))


def test_unit_gates_are_bitwise_stock_and_processors_come_back():
    adapter = DiTAdapter(dit_pipe())
    x, t, c = inputs()
    with torch.no_grad():
        stock = adapter.model_output(x, t, c)
    procs = processors(adapter.model)
    seen = []

    def loss(b):
        out = adapter.model_output(x, t, c)
        seen.append(out.detach())
        return out.square().mean()

    accumulate_scores(loss, attention(adapter.model), 1)
    assert torch.equal(seen[0], stock)  # ξ = 1 changes nothing, bit for bit
    with pytest.raises(ZeroDivisionError):
        accumulate_scores(lambda b: 1 / 0, attention(adapter.model), 1)
    assert processors(adapter.model) == procs
    assert not any(p.grad is not None for p in adapter.model.parameters())  # only the gates were differentiated


def test_gate_gradient_is_inner_product_and_finite_difference(dit64):
    """∂L/∂ξ_h at ξ = 1 (float64) equals ⟨∂L/∂o_h, o_h⟩ with o_h read off the stock model's to_out input, and the
    central difference of L in ξ_h; two batches add their absolute values (Algorithm 2)."""
    loss = scoring_loss(dit_subject(dit64, dtype=torch.float64), recipe(dit64), law="beta", seed=0)
    att = attention(dit64.model)
    S = accumulate_scores(loss, att, 1)
    layers = {n: att.modules[n] for n in att.head_counts()}
    captured = {}
    handles = [layers[n].to_out[0].register_forward_pre_hook(lambda m, a, n=n: captured.__setitem__(n, a[0]))
               for n in layers]
    try:
        L = loss(0)
        grads = torch.autograd.grad(L, [captured[n] for n in layers])
    finally:
        for h in handles:
            h.remove()
    delta = 1e-5
    for (name, attn), g in zip(layers.items(), grads, strict=True):
        o = captured[name].detach()
        d = attn.inner_dim // attn.heads
        inner = (g * o).reshape(*o.shape[:-1], attn.heads, d).sum(dim=(0, 1, 3))  # ⟨∂L/∂o_h, o_h⟩ [H]
        torch.testing.assert_close(S[name], inner.abs(), rtol=1e-9, atol=1e-14)
        for h in range(attn.heads):
            diff = []
            for sign in (1, -1):
                gate = torch.ones(attn.heads, dtype=torch.float64)
                gate[h] += sign * delta
                with att.hooks(head_masks={name: gate}), torch.no_grad():
                    diff.append(loss(0))
            fd = (diff[0] - diff[1]) / (2 * delta)
            assert float(fd) == pytest.approx(float(inner[h]), rel=1e-6, abs=1e-12)
    assert min(float(s.min()) for s in S.values()) > 0  # non-vacuous
    two = accumulate_scores(loss, att, 2)
    one_b = accumulate_scores(lambda b: loss(b + 1), att, 1)
    for name in layers:
        torch.testing.assert_close(two[name], S[name] + one_b[name], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["dit", "pixart"])
def test_removal_equals_zero_mask(kind):
    if kind == "dit":
        adapter = DiTAdapter(dit_pipe())
        cond = adapter.labels([1, 7])
    else:
        adapter = PixArtAdapter(tiny_pixart_pipeline())
        cond = adapter.prompts(["a cat", "the dog"])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    att = attention(adapter.model)
    counts = att.head_counts()
    heads = [Head(L0, 1), *(Head(L1, h) for h in range(counts[L1]))]  # layer 1 loses every head
    masks = {L0: torch.ones(counts[L0]), L1: torch.zeros(counts[L1])}
    masks[L0][1] = 0
    with torch.no_grad():
        stock = adapter(x, 300.0, cond)
        with att.hooks(head_masks=masks):
            masked = adapter(x, 300.0, cond)
        pruned = copy.deepcopy(adapter)
        attention(pruned.model).remove_heads(heads)
        removed = pruned(x, 300.0, cond)
    # the two forms sum over different channel sets in float32: a tolerance from the magnitudes involved
    atol = order_atol(masked.eps_c, masked.eps_u)
    torch.testing.assert_close(removed.eps_c, masked.eps_c, rtol=0, atol=atol)
    torch.testing.assert_close(removed.eps_u, masked.eps_u, rtol=0, atol=atol)
    assert (masked.eps_c - stock.eps_c).abs().max() > 1e-4  # the heads mattered
    attn0, attn1 = (attention(pruned.model).modules[n] for n in (L0, L1))
    d = 8  # attention_head_dim of both tiny models
    assert (attn0.heads, attn0.inner_dim, attn0.to_q.out_features, attn0.to_out[0].in_features) == \
        (counts[L0] - 1, (counts[L0] - 1) * d, (counts[L0] - 1) * d, (counts[L0] - 1) * d)
    assert attn1.heads == 0 and isinstance(attn1.processor, NoHeadsProcessor)
    assert att.head_counts() == counts  # the original adapter keeps its heads
    with pytest.raises(ValueError, match="out of range"):
        attention(pruned.model).remove_heads([Head(L0, counts[L0] - 1)])
    with pytest.raises(ValueError, match="persistent head gate"):
        attention(pruned.model).remove_heads([Head(L0, 0)], physically=False)


def test_subject_level_removal_copies_the_model():
    adapter = DiTAdapter(dit_pipe(heads=2))
    subject = dit_subject(adapter)
    before = copy.deepcopy(adapter.model.state_dict())
    pruned = without_heads(subject, [Head(L0, 0)])
    assert attention(pruned.net).head_counts() == {L0: 1, L1: 2}
    assert attention(subject.net).head_counts() == {L0: 2, L1: 2} and pruned.denoiser.model is pruned.net
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())


def test_random_heads_count_and_seed():
    counts = attention(dit_pipe().transformer).head_counts()
    a, b = random_heads(counts, 0.5, seed=1), random_heads(counts, 0.5, seed=1)
    assert a == b and len(a) == prune_count(8, 0.5) == 4 and len(set(a)) == 4
    assert {h.layer for h in a} <= {L0, L1}


def test_save_load_round_trip(tmp_path):
    pipe = dit_pipe()
    pipe.save_pretrained(tmp_path / "orig")
    adapter = DiTAdapter.from_pretrained(tmp_path / "orig")
    subject = dit_subject(adapter)
    before, heads = attention(adapter.model).head_counts(), [Head(L0, 0), Head(L0, 3), Head(L1, 2)]
    attention(adapter.model).remove_heads(heads)
    cfg = recipe(adapter, steps=2, batch_size=2, lr=1e-2, warmup=0)
    fit(trainable(subject, adapter.model), subject.training, cfg, tmp_path / "s.pt", progress=False,
        alpha_bar=alpha_bar(subject))  # weights move
    save_pruned(adapter.model, heads, tmp_path / "pruned", source=tmp_path / "orig", pipeline="DiTPipeline",
                heads_before=before)
    loaded = load_pruned(tmp_path / "pruned")
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(loaded.model_output(x, t, c), adapter.model_output(x, t, c))
    assert attention(loaded.model).head_counts() == {L0: 2, L1: 3}
    dit_pipe(heads=2).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="heads"):
        load_pruned(tmp_path / "pruned", source=tmp_path / "other")


def test_one_finetune_step_is_adamw_on_the_eps_loss(tmp_path):
    """AdamW's first step moves each weight by −lr·(g/(|g| + ε) + λθ) with g the gradient of the training loss on
    batch 0 (t uniform, CFG dropout), so the declared loss and optimizer are the ones used; the diffusers model
    stays in eval mode (its own label dropout draws from the global RNG)."""
    adapter = DiTAdapter(dit_pipe(heads=2))
    subject = dit_subject(adapter)
    ref = copy.deepcopy(adapter.model)
    lr, wd = 1e-3, 0.01
    cfg = recipe(adapter, steps=1, batch_size=4, lr=lr, weight_decay=wd, warmup=0, grad_clip=1e9, seed=5,
                 p_uncond=0.1)
    loss = eps_loss(trainable(subject, ref), alpha_bar(subject), *draw_batch(subject.training, cfg, 0))
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    fit(trainable(subject), subject.training, cfg, tmp_path / "s.pt", progress=False, alpha_bar=alpha_bar(subject))
    assert not adapter.model.training
    for p, p0, g in zip(adapter.model.parameters(), ref.parameters(), grads, strict=True):
        expect = p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expect.detach(), rtol=0, atol=order_atol(p0))


def test_training_rows_of_a_dit_subject_and_cfg_dropout():
    adapter = DiTAdapter(dit_pipe(heads=2))
    ts = dit_subject(adapter).training
    assert ts.cond.tolist() == [0, 1, 2, 0, 1, 2] and int(ts.null) == CLASSES
    cfg = TrainConfig(batch_size=4000, p_uncond=0.0)
    assert set(draw_batch(ts, cfg, 0)[3].tolist()) == {0, 1, 2}
    dropped = draw_batch(ts, replace(cfg, p_uncond=0.5), 0)[3]
    assert set(dropped.tolist()) == {0, 1, 2, CLASSES} and abs(float((dropped == CLASSES).double().mean()) - 0.5) < 0.05


def test_data_subject_layouts_and_bad_input():
    adapter = DiTAdapter(dit_pipe(heads=2))
    nhwc = images(3)
    labels = np.array([0, 4, 4])
    a, pa = data_subject(adapter, nhwc, labels=labels)
    b, pb = data_subject(adapter, nhwc.transpose(0, 3, 1, 2), labels=labels)
    assert torch.equal(pa, pb) and torch.equal(a.training.images, b.training.images)
    assert [p.id for p in a.prompts] == ["class:0", "class:4"] and torch.equal(a.references, a.training.images)
    assert a.training.images.shape == (3, 4, 8, 8) and float(pa.min()) >= -1 and float(pa.max()) <= 1
    _, p8 = data_subject(adapter, (nhwc * 255).round().astype(np.uint8), labels=labels)
    assert (p8 - pa).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\(3, 8, 8, 3\)"):
        data_subject(adapter, nhwc[:, :8, :8], labels=labels)
    signed = nhwc * 2 - 1
    signed[0, 0, 0, 0] = -1  # [-1, 1] data are refused, naming the range found
    with pytest.raises(ValueError, match=r"range over \[-1\.0, "):
        data_subject(adapter, signed, labels=labels)
    with pytest.raises(ValueError, match="num_classes=10"):
        data_subject(adapter, nhwc)
    with pytest.raises(ValueError, match=r"\[10\]"):
        data_subject(adapter, nhwc, labels=np.array([0, 10, 1]))
    with pytest.raises(ValueError, match="captions"):
        data_subject(PixArtAdapter(tiny_pixart_pipeline()), nhwc)


def test_generate_batch_invariant_and_cycles_classes():
    adapter = DiTAdapter(dit_pipe(heads=2))
    subject, _ = data_subject(adapter, images(3), labels=np.array([2, 5, 2]))
    a = generate(subject, 3, seed=4, steps=2, batch_size=2)
    b = generate(subject, 3, seed=4, steps=2, batch_size=3)
    # sample 1 has seed 5 and class prompts[5 mod 2] = class 5
    latents = adapter.generate(adapter.labels([5]), [5], 2, guidance=1.0).x_0
    ref = adapter.codec.decode(latents).clamp(-1, 1)
    # float32 batching changes summation order only; random DiT latents are far from O(1) (tests/diffusers_tiny.py)
    atol = order_atol(latents)
    torch.testing.assert_close(a, b, rtol=0, atol=atol)
    torch.testing.assert_close(a[1:2], ref, rtol=0, atol=atol)
    assert a.shape == (3, 3, 16, 16) and pixel_features(a).shape == (3, 768)
    assert pixel_features(torch.ones(2, 3, 64, 64)).shape == (2, 3 * 32 * 32)


def _cli_args(model, data, out, *extra):
    return ["prune", "--model", str(model), "--data", str(data), "--out", str(out), "--runs", "2", "--samples", "4",
            "--finetune-steps", "2", "--batches", "1", "--steps", "2", "--batch-size", "4", "--ratio", "0.25",
            *extra]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is how users ship feature nets
def test_cli_model_end_to_end(tmp_path, capsys, monkeypatch):
    from diffmem.cli.main import main

    dit_pipe().save_pretrained(tmp_path / "dit")
    np.savez(tmp_path / "data.npz", images=images(), labels=np.array([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "out"
    assert main(_cli_args(tmp_path / "dit", tmp_path / "data.npz", out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["original", "importance", "random"]
    for m in ("original", "importance", "random"):
        assert {"memorization_ratio", "fid", "precision", "recall"} <= set(summary["methods"][m])
        assert summary["methods"][m]["runs"] == 2
    for m in ("importance", "random"):  # paired with the original run by run
        assert summary["methods"][m]["paired_runs"] == 2 and "fid" in summary["methods"][m]["delta"]
    s = summary["settings"]
    assert s["model"] == str((tmp_path / "dit").resolve()) and "pixels" in s["feature_space"] and s["ratio"] == 0.25
    row = json.loads((out / "runs" / "importance-0.json").read_text())
    assert len(row["removed"]) == prune_count(8, 0.25) == 2
    pruned = load_pruned(out / "pruned")
    assert sum(attention(pruned.model).head_counts().values()) == 6
    assert sorted(map(tuple, json.loads((out / "pruned" / "pruned_heads.json").read_text())["removed"])) == \
        sorted(map(tuple, row["removed"]))
    assert "importance" in capsys.readouterr().out

    def boom(*a, **k):
        raise AssertionError("finished rows must not be recomputed")

    monkeypatch.setattr(prune_table, "_one_run", boom)
    assert main(_cli_args(tmp_path / "dit", tmp_path / "data.npz", out)) == 0
    assert json.loads((out / "summary.json").read_text())["methods"] == summary["methods"]
    monkeypatch.undo()
    # a local TorchScript feature model replaces pixels for FID / precision-recall, and is recorded
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 5))),
                   str(tmp_path / "feat.pt"))
    args = _cli_args(tmp_path / "dit", tmp_path / "data.npz", tmp_path / "out2", "--methods", "original",
                     "--features", str(tmp_path / "feat.pt"), "--preprocess", "identity")
    assert main(args) == 0 and main(args) == 0  # the second call resumes: same settings
    s2 = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert s2["settings"]["features"]["kind"] == "torchscript" and "torchscript" in s2["settings"]["feature_space"]
    assert s2["methods"]["original"]["fid"]["mean"] != pytest.approx(summary["methods"]["original"]["fid"]["mean"])


def test_pixart_table_end_to_end(tmp_path):
    """PixArt gets the same table: samples cycle over the data's captions, the pruned model reloads."""
    tiny_pixart_pipeline().save_pretrained(tmp_path / "pixart")
    captions = np.array(["a cat", "the dog", "a photo of a cat", "a cat", "the dog", "a dog"])
    np.savez(tmp_path / "data.npz", images=images(), captions=captions)
    adapter = PixArtAdapter.from_pretrained(tmp_path / "pixart")
    inputs = diffusers_inputs(adapter, tmp_path / "data.npz", batch_size=4)
    assert [p.text for p in inputs.subject.prompts] == sorted(set(captions.tolist()))
    assert inputs.subject.training.cond.tolist() == [0, 3, 2, 0, 3, 1] and int(inputs.subject.training.null) == 4
    before = copy.deepcopy(adapter.model.state_dict())
    settings = prune_table.TableSettings(ratio=0.25, runs=2, num_batches=1, finetune_steps=2, n_samples=4,
                                         sample_steps=2)
    table = prune_table.run_table(inputs.subject, inputs.evaluation, inputs.recipe, tmp_path / "out",
                                  settings=settings)
    assert list(table.methods) == ["original", "importance", "random"] and table["random"].paired_runs == 2
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())  # the model is untouched
    pruned = load_pruned(tmp_path / "out" / "pruned")
    assert sum(attention(pruned.model).head_counts().values()) == 4 - prune_count(4, 0.25)
    assert table.settings["pipeline"] == "PixArtAlphaPipeline" and "data_sha256" in table.settings


def test_cli_model_bad_input(tmp_path, capsys):
    from diffmem.cli.main import main

    dit_pipe(heads=2).save_pretrained(tmp_path / "dit")
    np.savez(tmp_path / "small.npz", images=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    assert main(_cli_args(tmp_path / "dit", tmp_path / "small.npz", tmp_path / "o1")) == 2
    assert "(4, 3, 8, 8)" in capsys.readouterr().err
    index = json.loads((tmp_path / "dit" / "model_index.json").read_text())
    (tmp_path / "dit" / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    assert main(_cli_args(tmp_path / "dit", tmp_path / "small.npz", tmp_path / "o2")) == 2
    assert "StableDiffusionPipeline" in capsys.readouterr().err
    assert main(["prune", "--model", str(tmp_path / "dit"), "--out", str(tmp_path / "o3")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["prune", "--out", str(tmp_path / "o3"), "--data", str(tmp_path / "small.npz")]) == 2  # --world
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --world and --model exclude each other
        main(["prune", "--world", "digits-dit", "--model", str(tmp_path / "dit"), "--out", str(tmp_path / "o3")])
    assert main(_cli_args(tmp_path / "dit", tmp_path / "small.npz", tmp_path / "o4", "--methods", "bogus")) == 2
    assert "bogus" in capsys.readouterr().err
