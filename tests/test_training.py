"""Training: determinism per seed, resume after a kill equals the uninterrupted run, checkpoint round trips, EMA."""

import pytest
import torch

from diffmem.io import read_arrays
from diffmem.training.checkpoint import load_state, save_state
from diffmem.training.config import TrainConfig
from diffmem.training.ema import EMA
from diffmem.training.trainer import TrainingSet, draw_batch, step_generator
from diffmem.worlds.registry import default_config
from diffmem.worlds.world import is_trained, load_world, train_world

TINY_MODEL = {"width": 16, "depth": 1, "heads": 2, "text_depth": 1, "text_heads": 2}


def tiny(world="digits-t2i", steps=6, **train):
    fields = {"planted": 2, "duplicates": 3} if world == "digits-t2i" else {"subset": 20}
    return default_config(world, **fields).with_overrides(
        model=TINY_MODEL, train={"steps": steps, "batch_size": 8, "checkpoint_every": 2, "warmup": 2, **train})


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))


def _weights(directory):
    return read_arrays(directory / "weights.safetensors")


class Kill(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    cfg = tiny(steps=7)
    full = train_world(cfg, tmp_path / "full", progress=False)

    def kill_at_5(step, loss):
        if step == 4:  # after the 5th step; the last checkpoint holds 4 steps
            raise Kill

    with pytest.raises(Kill):
        train_world(cfg, tmp_path / "cut", progress=False, callback=kill_at_5)
    assert not is_trained(tmp_path / "cut") and int(read_arrays(tmp_path / "cut/state.safetensors")["step"]) == 4
    resumed = train_world(cfg, tmp_path / "cut", progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (resumed / "state.safetensors").exists()


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = _weights(train_world(tiny(world="digits-dit"), tmp_path / "a", progress=False))
    b = _weights(train_world(tiny(world="digits-dit"), tmp_path / "b", progress=False))
    c = _weights(train_world(tiny(world="digits-dit", seed=1), tmp_path / "c", progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batches_depend_only_on_seed_and_step():
    ts = TrainingSet(torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 4, 4]), torch.arange(6), torch.tensor(9))
    cfg = TrainConfig(batch_size=64, p_uncond=0.5)
    a, b, c = draw_batch(ts, cfg, 3), draw_batch(ts, cfg, 3), draw_batch(ts, cfg, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and not torch.equal(a[2], c[2])
    dropped = a[3] == 9
    assert 0 < int(dropped.sum()) < 64  # CFG dropout replaced some conditions by the null one
    g1, g2 = step_generator(0, 1), step_generator(1, 0)
    assert not torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_checkpoint_save_load_equality(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    ema = EMA(net, 0.9)
    for step in range(3):
        net(torch.randn(2, 3)).square().sum().backward()
        opt.step()
        ema.update(net, step)
    save_state(tmp_path / "s.safetensors", step=3, net=net, ema=ema, opt=opt)
    torch.manual_seed(1)
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.1)
    ema2 = EMA(net2, 0.9)
    assert load_state(tmp_path / "s.safetensors", net=net2, ema=ema2, opt=opt2) == 3
    for k, v in net.state_dict().items():
        assert torch.equal(v, net2.state_dict()[k]) and torch.equal(ema.shadow[k], ema2.shadow[k])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])
    x = torch.randn(2, 3)  # one more step from either state gives identical weights
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).square().sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters(), strict=True))


def test_ema_matches_recursion():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema, expect = EMA(net, 0.99), 0.0
    for step in range(30):
        net.weight.data.fill_(float(step + 1))
        ema.update(net, step)
        d = min(0.99, (1 + step) / (10 + step))
        expect = d * expect + (1 - d) * (step + 1)
    assert ema.shadow["weight"].item() == pytest.approx(expect, rel=1e-6)


def test_ema_copies_buffers():
    from diffmem.nets.attention import Attention

    attn = Attention(4, 2)
    ema = EMA(attn, 0.999)
    attn.head_mask[0] = 0.0  # a pruned head
    ema.update(attn, step=10**6)
    assert ema.shadow["head_mask"].tolist() == [0.0, 1.0]


def test_world_loads_from_cache_and_refuses_other_config(tmp_path):
    cfg = tiny()
    world = load_world(cfg, progress=False)
    assert world.directory.parent.name == "worlds" and str(tmp_path / "home") in str(world.directory)
    again = load_world(cfg, train=False)
    assert all(torch.equal(a, b) for a, b in zip(world.net.parameters(), again.net.parameters(), strict=True))
    with pytest.raises(ValueError, match="not trained"):
        load_world(tiny(steps=3), train=False)
    with pytest.raises(Kill):  # a run killed in its first step leaves its config behind
        train_world(tiny(steps=3), tmp_path / "x", progress=False, callback=_raise_kill)
    with pytest.raises(ValueError, match="different run config"):
        train_world(tiny(steps=4), tmp_path / "x", progress=False)


def test_shipped_checkpoint_is_preferred(tmp_path, monkeypatch):
    import diffmem.worlds.world as world_module

    cfg = tiny(steps=2)
    shipped = train_world(cfg, tmp_path / "shipped", progress=False)
    monkeypatch.setattr(world_module, "bundled_dir", lambda config, data=None: shipped)
    world = load_world(cfg, train=False)  # nothing in the (empty) cache, yet it loads
    assert world.directory == shipped


def _raise_kill(step, loss):
    raise Kill


def test_bad_train_config():
    with pytest.raises(ValueError, match="p_uncond"):
        TrainConfig(p_uncond=1.0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
