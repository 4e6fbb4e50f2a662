"""Head pruning of Ye et al. (2025, Algorithms 1-2) on tiny random DiTs: gates, gradients, removal, time law,
ranking, and the table pipeline on a world subject."""

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

from diffmem.attention import Head, attention
from diffmem.io import read_arrays
from diffmem.mitigations import prune_table
from diffmem.mitigations.head_pruning import (
    accumulate_scores,
    head_gradients,
    lowest_heads,
    normalize_per_layer,
    prune_count,
    random_heads,
    rank_heads,
)
from diffmem.mitigations.prune_backends import world_inputs
from diffmem.mitigations.prune_results import Metrics, PruneRow, run_metrics, summarize
from diffmem.mitigations.pruning import PruneResult, generate, scoring_loss, select_heads, without_heads
from diffmem.mitigations.time_law import draw_timesteps, unit_to_index
from diffmem.nets.dit import DiTConfig
from diffmem.sampling.spec import SamplerSpec
from diffmem.schedules import DiscreteSchedule, discrete_grid
from diffmem.subject import Subject
from diffmem.training.config import TrainConfig
from diffmem.training.trainer import TrainingSet, fit
from diffmem.worlds.model import WorldDenoiser, WorldNet
from diffmem.worlds.world import load_world
from roundoff import order_atol
from test_training import tiny

CLASSES = 3


def tiny_net(seed=0, dtype=torch.float64, heads=4, depth=2):
    """A class-conditional WorldNet whose adaLN-Zero and output layers are randomised (at DiT's zero init every
    attention branch is gated off and all head gradients vanish)."""
    torch.manual_seed(seed)
    net = WorldNet(DiTConfig(image_size=4, channels=1, patch=2, width=8, depth=depth, heads=heads,
                             num_classes=CLASSES)).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    return net.eval()


def inputs(seed=1, dtype=torch.float64, B=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 1, 4, 4, generator=g, dtype=dtype), torch.randint(1000, (B,), generator=g),
            torch.randint(CLASSES + 1, (B,), generator=g))


def tiny_subject(net, training=None):
    """A subject around a tiny WorldNet (scaled-linear training schedule, as TrainConfig's default)."""
    schedule = DiscreteSchedule.named("scaled_linear", 1000)

    def sampler(n):
        return SamplerSpec(discrete_grid(schedule, n, spacing="trailing"), "ddim", 1.0, schedule)

    return Subject("tiny", WorldDenoiser(net, schedule, "tiny"), net, (1, 4, 4), sampler, training=training,
                   rebind=lambda n: WorldDenoiser(n, schedule, "tiny"))


def layers_of(net):
    return {n: attention(net).modules[n] for n in attention(net).head_counts()}


def test_layers_are_dit_self_attention_only():
    att = attention(tiny_net(depth=3))
    assert list(att.head_counts()) == ["dit.blocks.0.attn", "dit.blocks.1.attn", "dit.blocks.2.attn"]
    with pytest.raises(ValueError, match="Linear"):
        attention(torch.nn.Linear(2, 2))


def test_unit_gate_is_bitwise_identity():
    """ξ = 1 adds nothing: the layer output equals to_out(merge(o_h)) bit for bit, and scoring leaves the model
    output bit for bit unchanged."""
    net, (x, t, y) = tiny_net(dtype=torch.float32), inputs(dtype=torch.float32)
    attn = net.dit.blocks[0].attn
    seen = {}
    attn.heads.register_forward_hook(lambda m, i, o: seen.__setitem__("o", o))
    out = attn(torch.randn(2, 4, 8))
    B, H, N, d = seen["o"].shape
    assert torch.equal(out, attn.to_out(seen["o"].transpose(1, 2).reshape(B, N, H * d)))
    before = net(x, t, y)
    gated = []
    head_gradients(lambda: gated.append(net(x, t, y)) or gated[-1].square().mean(), attention(net))
    assert torch.equal(gated[0], before)  # gated at ξ = 1: bitwise the stock model
    attention(net).remove_heads([], physically=False)
    assert torch.equal(net(x, t, y), before)
    assert not any(a.head_mask.requires_grad or a.edit is not None for a in attention(net).modules.values())


def test_gate_gradient_is_inner_product_and_finite_difference():
    net, (x, t, y) = tiny_net(), inputs()
    layers = layers_of(net)
    outs = {}
    for name, attn in layers.items():
        def keep(m, i, o, name=name):
            if o.requires_grad:  # not under the finite-difference no_grad
                o.retain_grad()
                outs[name] = o
        attn.heads.register_forward_hook(keep)
    target = torch.randn_like(x)

    def loss():
        return (net(x, t, y) - target).square().mean()

    grads = head_gradients(loss, attention(net))
    loss().backward()
    for name, o in outs.items():
        by_hand = (o.grad * o).sum(dim=(0, 2, 3))  # ⟨∂L/∂o_h, o_h⟩ over batch, tokens, channels
        torch.testing.assert_close(grads[name], by_hand, rtol=1e-10, atol=1e-14)
    assert all(g.abs().max() > 0 for g in grads.values())
    mask, h, step = layers["dit.blocks.1.attn"].head_mask, 2, 1e-6
    with torch.no_grad():
        mask[h] = 1 + step
        up = loss()
        mask[h] = 1 - step
        down = loss()
        mask[h] = 1
    torch.testing.assert_close(grads["dit.blocks.1.attn"][h], (up - down) / (2 * step), rtol=1e-6, atol=1e-12)


def test_removal_equals_zero_mask():
    net, (x, t, y) = tiny_net(), inputs()
    doomed = [Head("dit.blocks.0.attn", 1), Head("dit.blocks.0.attn", 3)] + \
             [Head("dit.blocks.1.attn", h) for h in range(4)]  # a layer may lose every head
    masked, removed = copy.deepcopy(net), copy.deepcopy(net)
    attention(masked).remove_heads(doomed, physically=False)
    attention(removed).remove_heads(doomed)
    kept = layers_of(removed)["dit.blocks.0.attn"]
    assert kept.num_heads == 2 and kept.to_q.out_features == 4 and kept.to_kv.out_features == 8
    assert kept.to_out.in_features == 4 and "dit.blocks.0.attn.head_mask" in dict(removed.named_buffers())
    assert attention(removed).head_counts()["dit.blocks.1.attn"] == 0
    torch.testing.assert_close(removed(x, t, y), masked(x, t, y), rtol=0, atol=1e-12)
    assert not torch.allclose(masked(x, t, y), net(x, t, y))  # the pruned heads did contribute


def test_masked_and_removed_models_fine_tune_alike(tmp_path):
    """Fine-tuning (the training loss, AdamW) moves the kept weights identically under either removal form."""
    ts = TrainingSet(torch.randn(6, 1, 4, 4), torch.arange(6), torch.arange(6) % CLASSES, torch.tensor(CLASSES))
    cfg = TrainConfig(steps=3, batch_size=4, warmup=0, checkpoint_every=10)
    nets = [tiny_net(dtype=torch.float32) for _ in range(2)]
    doomed = random_heads(attention(nets[0]).head_counts(), 0.25, seed=3)
    attention(nets[0]).remove_heads(doomed, physically=False)
    attention(nets[1]).remove_heads(doomed)
    for i, net in enumerate(nets):
        fit(net, ts, cfg, tmp_path / f"state{i}.pt", progress=False)
    x, t, y = inputs(dtype=torch.float32)
    out = nets[0](x, t, y)
    # two summation orders in float32 for 3 AdamW steps: the difference scales with the output, not a fixed 1e-5
    torch.testing.assert_close(nets[1](x, t, y), out, rtol=0, atol=order_atol(out, ulps=1e3))


def test_unit_to_index_edges():
    u = torch.tensor([0.0, 0.0999, 0.1, 0.5, 0.9999, 1.0])
    assert unit_to_index(u, 1000).tolist() == [0, 99, 100, 500, 999, 999]
    with pytest.raises(ValueError, match="1.5"):
        unit_to_index(torch.tensor([1.5]), 1000)


@pytest.mark.parametrize("law", ["beta", "uniform"])
def test_timestep_law_matches_cdf(law):
    """P(t_index ≤ k) = F((k + 1) / T) with F the Beta(0.8, 2) (or uniform) CDF; DKW bound at level 1e-6."""
    T, n = 1000, 200_000
    idx = draw_timesteps(n, T, seed=7, law=law).numpy()
    assert idx.min() >= 0 and idx.max() <= T - 1
    empirical = np.cumsum(np.bincount(idx, minlength=T)) / n
    edges = np.arange(1, T + 1) / T
    exact = stats.beta(0.8, 2).cdf(edges) if law == "beta" else edges
    assert np.abs(empirical - exact).max() < np.sqrt(np.log(2 / 1e-6) / (2 * n))
    assert torch.equal(draw_timesteps(5, T, seed=7, law=law), draw_timesteps(5, T, seed=7, law=law))


def test_beta_statistics_of_spec():
    law = stats.beta(0.8, 2)
    assert law.mean() == pytest.approx(0.8 / 2.8) and law.median() == pytest.approx(0.2309, abs=1e-4)
    np.testing.assert_allclose(law.cdf([0.05, 0.1, 0.2, 0.5]), [0.160, 0.273, 0.453, 0.804], atol=6e-4)


def test_normalisation_and_global_ranking_by_hand():
    scores = {"L0": torch.tensor([3.0, 4.0]), "L1": torch.tensor([1.0, 2.0, 2.0]), "L2": torch.zeros(1)}
    importance = normalize_per_layer(scores)
    torch.testing.assert_close(importance["L0"], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(importance["L1"], torch.tensor([1 / 3, 2 / 3, 2 / 3]))
    assert importance["L2"].tolist() == [0.0]
    assert [(h.layer, h.index) for h in rank_heads(importance)] == \
        [("L2", 0), ("L1", 0), ("L0", 0), ("L1", 1), ("L1", 2), ("L0", 1)]
    # raw scores would drop L1's heads 1 and 2 (S = 2) before L0's head 0 (S = 3); normalized ones do not
    assert lowest_heads(importance, 0.5) == [Head("L2", 0), Head("L1", 0), Head("L0", 0)]
    assert lowest_heads(importance, 0.0) == []
    with pytest.raises(ValueError, match="-1"):
        normalize_per_layer({"L0": torch.tensor([-1.0, 1.0])})


def test_prune_count_is_floor_of_decimal_ratio():
    assert prune_count(72, 0.2) == 14 and prune_count(100, 0.29) == 29 and prune_count(9, 0.5) == 4
    with pytest.raises(ValueError, match="1.0"):
        prune_count(10, 1.0)


def test_random_heads_count_and_seed():
    counts = attention(tiny_net(depth=3)).head_counts()  # H = 12
    picks = [random_heads(counts, 0.5, seed=s) for s in range(4)]
    assert all(len(p) == 6 and len(set(p)) == 6 for p in picks)
    assert picks[0] == random_heads(counts, 0.5, seed=0) and len({tuple(p) for p in picks}) > 1


def test_scores_take_abs_per_batch():
    net, (x, t, y) = tiny_net(), inputs()
    att = attention(net)
    g = head_gradients(lambda: net(x, t, y).sum(), att)
    scores = accumulate_scores(lambda b: (-1) ** b * net(x, t, y).sum(), att, 2)  # signs cancel, abs do not
    for name in att.head_counts():
        torch.testing.assert_close(scores[name], 2 * g[name].abs())


def test_scoring_loss_end_to_end_prunes_lowest():
    net = tiny_net()
    ts = TrainingSet(torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.arange(6), torch.arange(6) % CLASSES,
                     torch.tensor(CLASSES))
    layers = attention(net).head_counts()
    batch_loss = scoring_loss(tiny_subject(net, ts), TrainConfig(batch_size=4), law="beta", seed=0)
    assert torch.equal(batch_loss(1), batch_loss(1)) and not torch.equal(batch_loss(0), batch_loss(1))
    importance = normalize_per_layer(accumulate_scores(batch_loss, attention(net), 3))
    for v in importance.values():
        torch.testing.assert_close(v.square().sum(), torch.tensor(1.0, dtype=torch.float64))
    doomed = lowest_heads(importance, 0.25)
    assert len(doomed) == 2
    worst = max(float(importance[h.layer][h.index]) for h in doomed)
    assert all(float(importance[n][i]) >= worst for n in layers for i in range(4) if Head(n, i) not in doomed)


def _digits_like_set(dtype=torch.float64):
    g = torch.Generator().manual_seed(5)
    return TrainingSet(torch.randn(6, 1, 4, 4, generator=g, dtype=dtype), torch.arange(6),
                       torch.arange(6) % CLASSES, torch.tensor(CLASSES))


def test_prune_drops_a_silent_head_first_round_trips_and_leaves_the_subject_alone(tmp_path):
    """A head whose output-projection columns are zero has ∂L/∂ξ_h = 0 exactly, so Algorithm 1 removes it; scoring,
    removal and fine-tuning work on copies, so the caller's model keeps every weight and buffer."""
    from diffmem.mitigations.pruning import finetune

    net = tiny_net(depth=3)
    with torch.no_grad():
        net.dit.blocks[2].attn.to_out.weight[:, 2:4] = 0  # head 1 of layer 2 (head_dim 2)
    before = copy.deepcopy(net.state_dict())
    subject = tiny_subject(net, _digits_like_set())
    result = select_heads(subject, TrainConfig(batch_size=4), ratio=0.1, num_batches=2, seed=0)
    assert result.total_heads == 12 and result.heads == [Head("dit.blocks.2.attn", 1)]
    assert result.removed_per_layer == {"dit.blocks.0.attn": 0, "dit.blocks.1.attn": 0, "dit.blocks.2.attn": 1}
    assert float(result.importance["dit.blocks.2.attn"][1]) == 0.0
    pruned = without_heads(subject, result.heads)
    assert pruned.net.dit.blocks[2].attn.head_mask.tolist() == [1, 0, 1, 1]
    loaded = PruneResult.load(result.save(tmp_path).parent)
    assert loaded.heads == result.heads and torch.equal(loaded.scores["dit.blocks.0.attn"],
                                                        result.scores["dit.blocks.0.attn"])
    removed = without_heads(subject, loaded.heads, physically=True)
    x, t, y = inputs()
    torch.testing.assert_close(removed.net(x, t, y), pruned.net(x, t, y), rtol=0, atol=1e-12)
    tuned = finetune(pruned, TrainConfig(batch_size=4, warmup=0), 2, tmp_path / "state.pt")
    assert not torch.equal(tuned.net(x, t, y), pruned.net(x, t, y))
    assert tuned.net.dit.blocks[2].attn.head_mask.tolist() == [1, 0, 1, 1]  # the gate stays 0 in the EMA
    for model in (net, subject.net):
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(m.edit is None for m in attention(net).modules.values())


def test_prune_random_and_bad_method():
    subject = tiny_subject(tiny_net(depth=3), _digits_like_set())
    runs = [select_heads(subject, TrainConfig(batch_size=4), method="random", ratio=0.3, seed=s) for s in (1, 1, 2)]
    assert runs[0].heads == runs[1].heads and len(runs[0].heads) == 3 and runs[0].scores == {}
    with pytest.raises(ValueError, match="magic"):
        select_heads(subject, TrainConfig(batch_size=4), method="magic")


def test_run_metrics_on_copies_and_noise():
    """Exact copies are all memorized (ratio 0) and match the real set: FID 0, precision = recall = 1."""
    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 1, 4, 4, generator=g) * 2 - 1
    flat = lambda x: x.flatten(1).double()  # noqa: E731
    copies = run_metrics(train.clone(), train, train, flat)
    assert copies.memorization_ratio == 1.0 and copies.precision == 1.0 and copies.recall == 1.0
    assert copies.fid == pytest.approx(0.0, abs=1e-8)
    far = run_metrics(train + 10, train, train, flat)
    assert far.memorization_ratio == 0.0 and far.precision == 0.0 and far.fid == pytest.approx(16 * 100, rel=1e-6)


def row(method, seed, m, f):
    return PruneRow(method, seed, Metrics(m, f, 0.5, 0.1))


def test_summarize_mean_and_sample_std():
    rows = [row("original", s, m, f) for s, (m, f) in enumerate([(0.7, 15), (0.6, 16), (0.8, 14)])]
    s = summarize({"original": rows, "single": [row("single", 0, 0.7, 15)]})
    assert s["original"].memorization_ratio.mean == pytest.approx(0.7) and s["original"].fid.mean == pytest.approx(15)
    assert s["original"].memorization_ratio.std == pytest.approx(0.1) and s["original"].fid.std == pytest.approx(1.0)
    assert s["original"].runs == 3 and np.isnan(s["single"].fid.std) and s["original"].paired_runs == 0


def test_paired_deltas_by_seed():
    runs = {"original": [row("original", 0, 0.7, 30), row("original", 1, 0.8, 20)],
            "pruned": [row("pruned", 1, 0.6, 21), row("pruned", 0, 0.6, 32),
                       row("pruned", 2, 0.0, 0)],  # seed 2 has no partner: ignored
            "alone": [row("alone", 5, 0.1, 1)]}
    s = summarize(runs)
    assert s["alone"].paired_runs == 0 and not s["alone"].delta and s["pruned"].paired_runs == 2
    d = s["pruned"].delta
    assert d["memorization_ratio"].mean == pytest.approx(-0.15)  # (-0.1 - 0.2) / 2
    assert d["fid"].mean == pytest.approx(1.5) and d["fid"].std == pytest.approx(np.std([2, 1], ddof=1))


def _tiny_dit_world(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    return load_world(tiny(world="digits-dit", steps=2), progress=False)


def flat(x):
    return x.flatten(1).double()


def test_generate_from_a_pruned_world_is_seeded_and_form_independent(tmp_path, monkeypatch):
    """Sampling pruned copies: masked and physically removed heads give the same images; seeds fix the batch.

    The two forms (and two batch sizes) sum in different orders, so they agree only up to round-off, which in
    float32 depends on the CPU's kernels (Intel and AMD differ). The check therefore runs in float64, where a
    round-off of eps64 · |x| per operation, amplified through the network and 3 sampling steps by far less than
    10⁶, stays below ``atol``; a wrong head or a wrong seed changes the images by more than 1e-2 (asserted)."""
    world = _tiny_dit_world(tmp_path, monkeypatch)
    world.net.double()
    with torch.no_grad():  # two training steps leave adaLN-Zero near 0, where heads barely matter
        for p in world.net.parameters():
            p.add_(torch.randn_like(p), alpha=0.3)
    subject = world_inputs(world, features=flat).subject
    base = generate(subject, 3, seed=4, steps=3)
    atol = 1e6 * torch.finfo(torch.float64).eps * max(1.0, base.abs().max().item())
    assert base.dtype == torch.float64 and base.shape == (3, *world.data.shape)
    assert torch.equal(base, generate(subject, 3, seed=4, steps=3))
    # sample i depends on seed + i only (batching changes float summation order, not the draw)
    torch.testing.assert_close(generate(subject, 3, seed=4, steps=3, batch_size=2), base, rtol=0, atol=atol)
    torch.testing.assert_close(generate(subject, 2, seed=5, steps=3), base[1:], rtol=0, atol=atol)
    assert (generate(subject, 2, seed=6, steps=3) - base[1:]).abs().max() > 1e-2
    doomed = random_heads(attention(world.net).head_counts(), 0.5, seed=0)
    masked = generate(without_heads(subject, doomed), 3, seed=4, steps=3)
    assert (masked - base).abs().max() > 1e-2
    removed = generate(without_heads(subject, doomed, physically=True), 3, seed=4, steps=3)
    torch.testing.assert_close(removed, masked, rtol=0, atol=atol)
    assert torch.equal(generate(subject, 3, seed=4, steps=3), base)  # the subject itself is unchanged


def _settings(**kw):
    return prune_table.TableSettings(**{"ratio": 0.25, "runs": 2, "num_batches": 1, "finetune_steps": 2,
                                        "n_samples": 6, "sample_steps": 2, **kw})


def test_run_table_rows_restore_and_resume(tmp_path, monkeypatch):
    world = _tiny_dit_world(tmp_path, monkeypatch)
    before = copy.deepcopy(world.net.state_dict())
    inputs = world_inputs(world, features=flat)
    args = (inputs.subject, inputs.evaluation, inputs.recipe, tmp_path / "out")
    table = prune_table.run_table(*args, settings=_settings())
    assert list(table.methods) == ["original", "importance", "random"]
    assert all(table[m].runs == 2 for m in prune_table.TABLE_METHODS)
    assert all(torch.equal(v, before[k]) for k, v in world.net.state_dict().items())  # the world is untouched
    H = sum(attention(world.net).head_counts().values())
    row = json.loads((tmp_path / "out" / "runs" / "importance-1.json").read_text())
    assert len(row["removed"]) == prune_count(H, 0.25)
    saved = read_arrays(tmp_path / "out" / "pruned" / "weights.safetensors")
    assert sum(int((saved[f"{n}.head_mask"] == 0).sum()) for n in attention(world.net).head_counts()) == \
        prune_count(H, 0.25)
    x0 = generate(inputs.subject, 6, seed=6, steps=2)  # run 1 of "original" samples seeds 6..11
    expect = run_metrics(x0, world.train_images(), world.data.images, flat)
    got = PruneRow.from_dict(json.loads((tmp_path / "out" / "runs" / "original-1.json").read_text())).metrics
    assert got.memorization_ratio == expect.memorization_ratio and got.fid == pytest.approx(expect.fid)
    for m in ("importance", "random"):  # paired with the original run by run
        assert table[m].paired_runs == 2 and set(table[m].delta) == {"memorization_ratio", "fid", "precision",
                                                                     "recall"}

    def boom(*a, **k):
        raise AssertionError("finished rows must not be recomputed")

    monkeypatch.setattr(prune_table, "_one_run", boom)
    assert prune_table.run_table(*args, settings=_settings()).to_dict() == json.loads(
        (tmp_path / "out" / "summary.json").read_text())
    # summarize-only: each method over the rows it has, methods without rows left out, nothing computed
    (tmp_path / "out" / "runs" / "random-1.json").unlink()
    partial = prune_table.run_table(*args, settings=_settings(), methods=("random", "importance-ft300"),
                                    compute=False)
    assert partial["random"].runs == 1 and "original" not in partial.methods
    assert "importance-ft300" not in partial.methods and set(partial.settings["variants"]) == {"random"}
    fid = {m: json.loads((tmp_path / "out" / "runs" / f"{m}-0.json").read_text())["metrics"]["fid"]
           for m in ("original", "random")}
    assert partial["random"].paired_runs == 1  # the originals on disk pair even when not asked for
    assert partial["random"].delta["fid"].mean == pytest.approx(fid["random"] - fid["original"])


def test_cli_prune_writes_summary(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from diffmem.cli.main import main

    world = _tiny_dit_world(tmp_path, monkeypatch)
    monkeypatch.setattr("diffmem.worlds.world.load_world", lambda name, progress=True: world)
    monkeypatch.setattr("diffmem.mitigations.prune_backends.load_digits_classifier",
                        lambda: SimpleNamespace(features=flat))
    out = tmp_path / "out"
    args = ["prune", "--out", str(out), "--runs", "2", "--samples", "5", "--finetune-steps", "1", "--batches", "1",
            "--steps", "2", "--law", "uniform", "--methods", "table"]
    assert main([*args, "--ratio", "0.3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["ratio"] == 0.3 and summary["settings"]["law"] == "uniform"
    assert summary["settings"]["n_samples"] == 5 and summary["settings"]["num_batches"] == 1
    assert {"memorization_ratio", "fid", "precision", "recall", "delta"} <= set(summary["methods"]["importance"])
    assert "importance" in capsys.readouterr().out
    assert main(["prune", "--out", str(out / "bad"), "--ratio", "1.5"]) == 2
    assert "1.5" in capsys.readouterr().err
    assert main(["prune", "--out", str(out / "bad"), "--methods", "importance,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    # resuming a folder with other settings is refused by name
    assert main([*args, "--ratio", "0.2"]) == 2
    assert "ratio" in capsys.readouterr().err


def test_copy_ablation_removes_the_heads_whose_ablation_breaks_copies(tmp_path, monkeypatch):
    """With a scripted copy measurement (head h alone off raises the mean NN ratio by v[h]) the top ⌊ηH⌋ heads
    by v are chosen, the model is unchanged afterwards, and a pruned net is refused."""
    from diffmem.mitigations import copy_ablation as ca

    world = _tiny_dit_world(tmp_path, monkeypatch)
    counts = attention(world.net).head_counts()
    names = list(counts)
    v = {Head(n, h): float(torch.rand(1, generator=torch.Generator().manual_seed(7 * i + h)))
         for i, n in enumerate(names) for h in range(counts[n])}
    seen = []

    def scripted(subject, references, n, seed, steps, head_masks):
        off = [Head(name, h) for name, mask in head_masks.items() for h in range(len(mask)) if mask[h] == 0]
        seen.append(seed)
        return torch.full((n,), 0.2 + sum(v[h] for h in off))

    monkeypatch.setattr(ca, "_ratios", scripted)
    before = copy.deepcopy(world.net.state_dict())
    subject = world_inputs(world, features=flat).subject
    res = ca.copy_ablation(subject, world.train_images(), 0.5, n_samples=4, seed=3)
    k = prune_count(len(v), 0.5)
    assert res.heads == sorted(v, key=lambda h: -v[h])[:k]
    assert res.scores[names[0]][1] == pytest.approx(v[Head(names[0], 1)])
    assert res.baseline_ratio == pytest.approx(0.2) and res.baseline_copy_rate == 1.0
    assert set(seen) == {ca.SCORING_SEED + 3 * 4}  # one scoring batch, far from evaluation seeds
    assert all(torch.equal(t, before[key]) for key, t in world.net.state_dict().items())
    with pytest.raises(ValueError, match="unpruned"):
        ca.copy_ablation(without_heads(subject, res.heads[:1]), world.train_images(), 0.5, n_samples=4)


def test_copy_ablation_gates_one_head_at_a_time(tmp_path, monkeypatch):
    """The real measurement: the scoring batch with head h gated off equals sampling a copy without head h."""
    from diffmem.mitigations import copy_ablation as ca

    world = _tiny_dit_world(tmp_path, monkeypatch)
    subject = world_inputs(world, features=flat).subject
    name = next(iter(attention(world.net).head_counts()))
    gate = torch.tensor([1.0, 0.0, 1.0, 1.0])[:attention(world.net).head_counts()[name]]
    refs = world.train_images()
    gated = ca._ratios(subject, refs, 3, 7, 2, {name: gate})
    pruned = without_heads(subject, [Head(name, 1)])
    expect = ca._ratios(pruned, refs, 3, 7, 2, {})
    assert torch.equal(gated, expect)


def test_run_table_variants(tmp_path, monkeypatch):
    """Variant rows: their own η, time law and fine-tuning weight decay reach the pruning and fine-tuning calls;
    ours is labelled and its model saved."""
    world = _tiny_dit_world(tmp_path, monkeypatch)
    calls = []
    real_select, real_finetune = prune_table.select_heads, prune_table.finetune
    monkeypatch.setattr(prune_table, "select_heads", lambda *a, **k: calls.append(("prune", k["ratio"], k["law"]))
                        or real_select(*a, **k))
    monkeypatch.setattr(prune_table, "finetune", lambda subject, cfg, *a, **k: calls.append(
        ("finetune", cfg.weight_decay)) or real_finetune(subject, cfg, *a, **k))
    methods = ("importance-uniform-t", "importance-wd0.3", "importance-eta0.5", "ours-copy-ablation")
    inputs = world_inputs(world, features=flat)
    table = prune_table.run_table(inputs.subject, inputs.evaluation, inputs.recipe, tmp_path / "out",
                                  settings=_settings(runs=1, finetune_steps=1, n_samples=5, score_samples=3),
                                  methods=methods)
    assert list(table.methods) == list(methods)
    assert calls == [("prune", 0.25, "uniform"), ("finetune", 0.0), ("prune", 0.25, "beta"), ("finetune", 0.3),
                     ("prune", 0.5, "beta"), ("finetune", 0.0), ("finetune", 0.0)]
    H = sum(attention(world.net).head_counts().values())
    rows = {m: json.loads((tmp_path / "out" / "runs" / f"{m}-0.json").read_text()) for m in methods}
    assert len(rows["importance-eta0.5"]["removed"]) == prune_count(H, 0.5)
    assert rows["ours-copy-ablation"]["ours"] and not rows["importance-wd0.3"]["ours"]
    assert table["ours-copy-ablation"].ours and "(ours)" in prune_results_text(table)
    assert len(rows["ours-copy-ablation"]["removed"]) == prune_count(H, 0.25)
    assert (tmp_path / "out" / "pruned-ours-copy-ablation" / "removed.json").exists()
    with pytest.raises(ValueError, match="bogus"):
        prune_table.run_table(*[inputs.subject, inputs.evaluation, inputs.recipe], tmp_path / "x",
                              methods=("bogus",))


def prune_results_text(table):
    from diffmem.mitigations.prune_results import format_table

    return format_table(table)
