"""Head pruning of Ye et al. (2025, Algorithms 1-2) on tiny random diffusers DiTs (and PixArt's layer selection and
removal): gates, gradients, physical removal, save/load, fine-tuning, data checks and the ``--model`` CLI
(spec ye2025_provable_separations §5 and §9 item 9)."""

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffmem.adapters.attention import attention_layers  # noqa: E402
from diffmem.adapters.dit import DiTAdapter  # noqa: E402
from diffmem.adapters.pixart import PixArtAdapter  # noqa: E402
from diffmem.mitigations import diffusers_table as dt  # noqa: E402
from diffmem.mitigations.diffusers_heads import (  # noqa: E402
    NoHeadsProcessor,
    head_counts,
    head_scores,
    load_pruned,
    random_model_heads,
    remove_heads,
    save_pruned,
    self_attention_layers,
)
from diffmem.mitigations.head_pruning import Head, prune_count  # noqa: E402
from diffmem.sampling.module_hooks import AttentionHooks  # noqa: E402
from diffusers_tiny import (  # noqa: E402, F401
    DIT_BETAS,
    _perturb,
    make_scheduler,
    one_thread,
    tiny_pixart_pipeline,
    tiny_vae,
)

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


def latent_data(n=6, dtype=torch.float64, seed=0):
    """Training latents drawn directly (no VAE): enough for the loss, which sees only x0 and labels."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 8, 8, generator=g, dtype=dtype)
    labels = torch.arange(n) % 3
    return dt.ModelData(torch.zeros(n, 3, 16, 16), x0, labels, [0, 1, 2])


def batch_loss(adapter, data, law="beta", batch_size=3, seed=0):
    T = adapter.schedule.num_train_timesteps
    return lambda b: dt.eps_loss(adapter, *dt.draw_batch(data, b, seed=seed, stream=0, batch_size=batch_size,
                                                         num_train_timesteps=T, law=law, p_uncond=0.3,
                                                         null_class=adapter.null_class))


@pytest.fixture(scope="module")
def dit64():
    adapter = DiTAdapter(dit_pipe())
    adapter.model.to(torch.float64)
    return adapter


def inputs(B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.tensor([20.0, 400.0, 900.0][:B]), torch.tensor([1, 7, 10][:B])


def test_layers_are_self_attention_only():
    assert list(self_attention_layers(dit_pipe().transformer)) == [L0, L1]
    pixart = tiny_pixart_pipeline().transformer
    names = list(self_attention_layers(pixart))
    assert names == [L0, L1] and {n for n in attention_layers(pixart) if n.endswith("attn2")}  # cross left out
    with pytest.raises(ValueError, match="Linear"):
        self_attention_layers(torch.nn.Linear(2, 2))


def test_unit_gates_are_bitwise_stock_and_processors_come_back():
    adapter = DiTAdapter(dit_pipe())
    x, t, c = inputs()
    with torch.no_grad():
        stock = adapter.model_output(x, t, c)
    procs = {n: a.processor for n, a in attention_layers(adapter.model).items()}
    seen = []

    def loss(b):
        out = adapter.model_output(x, t, c)
        seen.append(out.detach())
        return out.square().mean()

    head_scores(adapter.model, loss, 1)
    assert torch.equal(seen[0], stock)  # ξ = 1 changes nothing, bit for bit
    with pytest.raises(ZeroDivisionError):
        head_scores(adapter.model, lambda b: 1 / 0, 1)
    assert {n: a.processor for n, a in attention_layers(adapter.model).items()} == procs
    assert not any(p.grad is not None for p in adapter.model.parameters())  # only the gates were differentiated


def test_gate_gradient_is_inner_product_and_finite_difference(dit64):
    """∂L/∂ξ_h at ξ = 1 (float64) equals ⟨∂L/∂o_h, o_h⟩ with o_h read off the stock model's to_out input, and the
    central difference of L in ξ_h; two batches add their absolute values (Algorithm 2)."""
    data = latent_data()
    loss = batch_loss(dit64, data)
    S = head_scores(dit64.model, loss, 1)
    layers = self_attention_layers(dit64.model)
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
                with AttentionHooks(dit64.model, head_masks={name: gate}), torch.no_grad():
                    diff.append(loss(0))
            fd = (diff[0] - diff[1]) / (2 * delta)
            assert float(fd) == pytest.approx(float(inner[h]), rel=1e-6, abs=1e-12)
    assert min(float(s.min()) for s in S.values()) > 0  # non-vacuous
    two = head_scores(dit64.model, loss, 2)
    one_b = head_scores(dit64.model, lambda b: loss(b + 1), 1)
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
    counts = head_counts(adapter.model)
    heads = [Head(L0, 1), *(Head(L1, h) for h in range(counts[L1]))]  # layer 1 loses every head
    masks = {L0: torch.ones(counts[L0]), L1: torch.zeros(counts[L1])}
    masks[L0][1] = 0
    with torch.no_grad():
        stock = adapter(x, 300.0, cond)
        with AttentionHooks(adapter.model, head_masks=masks):
            masked = adapter(x, 300.0, cond)
        pruned = copy.deepcopy(adapter)
        remove_heads(pruned.model, heads)
        removed = pruned(x, 300.0, cond)
    torch.testing.assert_close(removed.eps_c, masked.eps_c, rtol=0, atol=1e-6)
    torch.testing.assert_close(removed.eps_u, masked.eps_u, rtol=0, atol=1e-6)
    assert (masked.eps_c - stock.eps_c).abs().max() > 1e-4  # the heads mattered
    attn0, attn1 = (self_attention_layers(pruned.model)[n] for n in (L0, L1))
    d = 8  # attention_head_dim of both tiny models
    assert (attn0.heads, attn0.inner_dim, attn0.to_q.out_features, attn0.to_out[0].in_features) == \
        (counts[L0] - 1, (counts[L0] - 1) * d, (counts[L0] - 1) * d, (counts[L0] - 1) * d)
    assert attn1.heads == 0 and isinstance(attn1.processor, NoHeadsProcessor)
    with pytest.raises(ValueError, match="out of range"):
        remove_heads(pruned.model, [Head(L0, counts[L0] - 1)])


def test_random_heads_count_and_seed():
    model = dit_pipe().transformer
    a, b = random_model_heads(model, 0.5, seed=1), random_model_heads(model, 0.5, seed=1)
    assert a == b and len(a) == prune_count(8, 0.5) == 4 and len(set(a)) == 4
    assert {h.layer for h in a} <= {L0, L1}


def test_save_load_round_trip(tmp_path):
    pipe = dit_pipe()
    pipe.save_pretrained(tmp_path / "orig")
    adapter = DiTAdapter.from_pretrained(tmp_path / "orig")
    before, heads = head_counts(adapter.model), [Head(L0, 0), Head(L0, 3), Head(L1, 2)]
    remove_heads(adapter.model, heads)
    dt.finetune_model(adapter, latent_data(dtype=torch.float32), 2, batch_size=2, lr=1e-2)  # weights move
    save_pruned(adapter.model, heads, tmp_path / "pruned", source=tmp_path / "orig", pipeline="DiTPipeline",
                heads_before=before)
    loaded = load_pruned(tmp_path / "pruned")
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(loaded.model_output(x, t, c), adapter.model_output(x, t, c))
    assert head_counts(loaded.model) == {L0: 2, L1: 3}
    dit_pipe(heads=2).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="heads"):
        load_pruned(tmp_path / "pruned", source=tmp_path / "other")


def test_one_finetune_step_is_adamw_on_the_eps_loss():
    """AdamW's first step moves each weight by −lr·(g/(|g| + ε) + λθ) with g the gradient of the ε-loss on
    fine-tuning batch 0 (t uniform), so the declared loss and optimizer are the ones used."""
    adapter = DiTAdapter(dit_pipe(heads=2))
    data = latent_data(dtype=torch.float32)
    ref = copy.deepcopy(adapter.model)
    T = adapter.schedule.num_train_timesteps
    batch = dt.draw_batch(data, 0, seed=5, stream=1, batch_size=4, num_train_timesteps=T, law="uniform",
                          p_uncond=0.1, null_class=CLASSES)
    twin = DiTAdapter(copy.deepcopy(adapter.pipeline))
    twin.pipeline.transformer = ref
    grads = torch.autograd.grad(dt.eps_loss(twin, *batch), list(ref.parameters()))
    lr, wd = 1e-3, 0.01
    losses = dt.finetune_model(adapter, data, 1, seed=5, batch_size=4, lr=lr, weight_decay=wd)
    assert len(losses) == 1
    for p, p0, g in zip(adapter.model.parameters(), ref.parameters(), grads, strict=True):
        expect = p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expect.detach(), rtol=0, atol=1e-6)


def test_draw_batch_dropout_and_time_law():
    data = latent_data(dtype=torch.float32)
    kw = {"seed": 0, "stream": 0, "batch_size": 4000, "num_train_timesteps": 1000, "law": "beta",
          "null_class": CLASSES}
    x0, t, eps, y = dt.draw_batch(data, 0, p_uncond=0.0, **kw)
    assert set(y.tolist()) == {0, 1, 2} and abs(t.double().mean().item() / 1000 - 0.8 / 2.8) < 0.01
    assert torch.equal(dt.draw_batch(data, 0, p_uncond=0.0, **kw)[2], eps)  # seeded by (seed, stream, b)
    assert set(dt.draw_batch(data, 0, p_uncond=1.0, **kw)[3].tolist()) == {CLASSES}


def test_prepare_data_layouts_and_bad_input():
    adapter = DiTAdapter(dit_pipe(heads=2))
    rng = np.random.default_rng(0)
    nhwc = rng.random((3, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 4, 4])
    a = dt.prepare_data(adapter, nhwc, labels)
    b = dt.prepare_data(adapter, nhwc.transpose(0, 3, 1, 2), labels)
    assert torch.equal(a.images, b.images) and torch.equal(a.x0, b.x0) and a.classes == [0, 4]
    assert a.x0.shape == (3, 4, 8, 8) and float(a.images.min()) >= -1 and float(a.images.max()) <= 1
    u8 = dt.prepare_data(adapter, (nhwc * 255).round().astype(np.uint8), labels)
    assert (u8.images - a.images).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\(3, 8, 8, 3\)"):
        dt.prepare_data(adapter, nhwc[:, :8, :8], labels)
    signed = nhwc * 2 - 1
    signed[0, 0, 0, 0] = -1  # [-1, 1] data are refused, naming the range found
    with pytest.raises(ValueError, match=r"range over \[-1\.0, "):
        dt.prepare_data(adapter, signed, labels)
    with pytest.raises(ValueError, match="num_classes=10"):
        dt.prepare_data(adapter, nhwc)
    with pytest.raises(ValueError, match=r"\[10\]"):
        dt.prepare_data(adapter, nhwc, np.array([0, 10, 1]))


def test_generate_images_batch_invariant_and_cycles_classes():
    adapter = DiTAdapter(dit_pipe(heads=2))
    a = dt.generate_images(adapter, 3, [2, 5], seed=4, steps=2, batch=2)
    b = dt.generate_images(adapter, 3, [2, 5], seed=4, steps=2, batch=3)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # sample 1 has seed 5 and class classes[5 mod 2] = 5
    ref = adapter.codec.decode(adapter.generate(adapter.labels([5]), [5], 2, guidance=1.0).x_0).clamp(-1, 1)
    torch.testing.assert_close(a[1:2], ref, rtol=0, atol=1e-5)
    assert a.shape == (3, 3, 16, 16) and dt.pixel_features(a).shape == (3, 768)
    assert dt.pixel_features(torch.ones(2, 3, 64, 64)).shape == (2, 3 * 32 * 32)


def _cli_args(model, data, out, *extra):
    return ["prune", "--model", str(model), "--data", str(data), "--out", str(out), "--runs", "2", "--samples", "4",
            "--finetune-steps", "2", "--batches", "1", "--steps", "2", "--batch-size", "4", "--ratio", "0.25",
            *extra]


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is how users ship feature nets
def test_cli_model_end_to_end(tmp_path, capsys, monkeypatch):
    from diffmem.cli.main import main

    dit_pipe().save_pretrained(tmp_path / "dit")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.random((6, 16, 16, 3)).astype(np.float32),
             labels=np.array([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "out"
    assert main(_cli_args(tmp_path / "dit", tmp_path / "data.npz", out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"original", "importance", "random", "settings"}
    for m in ("original", "importance", "random"):
        assert {"mem_ratio_mean", "mem_ratio_std", "fid_mean", "fid_std", "precision_mean", "recall_mean"} <= \
            set(summary[m]) and summary[m]["runs"] == 2
    s = summary["settings"]
    assert s["model"] == str((tmp_path / "dit").resolve()) and "pixels" in s["feature_space"] and s["ratio"] == 0.25
    row = json.loads((out / "runs" / "importance-0.json").read_text())
    assert len(row["removed"]) == prune_count(8, 0.25) == 2
    pruned = load_pruned(out / "pruned")
    assert sum(head_counts(pruned.model).values()) == 6
    assert sorted(map(tuple, json.loads((out / "pruned" / "pruned_heads.json").read_text())["removed"])) == \
        sorted(map(tuple, row["removed"]))
    assert "importance" in capsys.readouterr().out

    def boom(*a, **k):
        raise AssertionError("finished rows must not be recomputed")

    monkeypatch.setattr(dt, "_one_run", boom)
    assert main(_cli_args(tmp_path / "dit", tmp_path / "data.npz", out)) == 0
    assert json.loads((out / "summary.json").read_text())["importance"] == summary["importance"]
    monkeypatch.undo()
    # a local TorchScript feature model replaces pixels for FID / precision-recall, and is recorded
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 5))),
                   str(tmp_path / "feat.pt"))
    args = _cli_args(tmp_path / "dit", tmp_path / "data.npz", tmp_path / "out2", "--methods", "original",
                     "--features", str(tmp_path / "feat.pt"), "--preprocess", "identity")
    assert main(args) == 0 and main(args) == 0  # the second call resumes: same settings
    s2 = json.loads((tmp_path / "out2" / "summary.json").read_text())
    assert s2["settings"]["features"]["kind"] == "torchscript" and "torchscript" in s2["settings"]["feature_space"]
    assert s2["original"]["fid_mean"] != pytest.approx(summary["original"]["fid_mean"])


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
    assert main(_cli_args(tmp_path / "dit", tmp_path / "small.npz", tmp_path / "o4", "--methods", "importance-wd0.3")) \
        == 2
    assert "importance-wd0.3" in capsys.readouterr().err
