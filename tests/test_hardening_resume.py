"""Kill and resume: a resumed training equals the uninterrupted one with a complete loss log; a hard kill leaves no
complete-looking file; a sweep never reuses rows made under other settings; two concurrent prune tables merge."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from diffmem.io import read_arrays, read_json
from diffmem.theory import sweeps
from diffmem.theory.mlp import TrainConfig
from diffmem.theory.sampler import SamplerConfig
from diffmem.theory.sweeps import SweepConfig, run_sweep
from diffmem.worlds.world import is_trained, train_world
from test_training import tiny


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))


class Kill(Exception):
    pass


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1",
            "DIFFMEM_HOME": str(tmp_path / "home")}


# 60 steps, checkpoints every 20, the loss log every 50: a kill after step 45 resumes from 40 with the 40 losses
# of the open interval (1..40) that only the checkpoint remembers
CFG = dict(steps=60, checkpoint_every=20)


def _same_weights(a, b):
    a, b = read_arrays(a / "weights.safetensors"), read_arrays(b / "weights.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resumed_training_log_has_every_interval(tmp_path):
    cfg = tiny(**CFG)
    full = train_world(cfg, tmp_path / "full", progress=False)

    def kill(step, loss):
        if step == 44:
            raise Kill

    with pytest.raises(Kill):
        train_world(cfg, tmp_path / "cut", progress=False, callback=kill)
    resumed = train_world(cfg, tmp_path / "cut", progress=False)
    log_full, log_cut = read_json(full / "train.json")["losses"], read_json(resumed / "train.json")["losses"]
    assert [s for s, _ in log_full] == [50]
    assert log_cut == log_full  # every interval, the one spanning the kill included, bit for bit
    assert _same_weights(full, resumed)


KILL_SCRIPT = """
import os, sys
from test_training import tiny
from diffmem.worlds.world import train_world
def die(step, loss):
    if step == 44:
        os._exit(137)  # a hard kill: no cleanup, no finally
train_world(tiny(steps=60, checkpoint_every=20), sys.argv[1], progress=False, callback=die)
"""


def test_hard_kill_then_resume(tmp_path):
    cut = tmp_path / "cut"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(cut)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 137, done.stderr[-2000:]
    # nothing looks complete: no weights, no train.json; the state is the last checkpoint, whole
    assert not is_trained(cut) and not (cut / "weights.safetensors").exists() and not (cut / "train.json").exists()
    assert int(read_arrays(cut / "state.safetensors")["step"]) == 40
    leftover = cut / ".state.safetensors.k1ll3d.tmp"  # what a kill during a checkpoint write leaves
    leftover.write_bytes(b"\0" * 4096)
    os.utime(leftover, (0, 0))
    resumed = train_world(tiny(**CFG), cut, progress=False)
    full = train_world(tiny(**CFG), tmp_path / "full", progress=False)
    assert _same_weights(full, resumed) and not leftover.exists()
    assert read_json(resumed / "train.json")["losses"] == read_json(full / "train.json")["losses"]


TINY = SweepConfig("tiny", dim=4, n_size=(8,), widths=(4, 8), n_grid=(8, 16), dims=(2,), fixed_width=8,
                   n_decay=(8,), decays=(0.0, 1.0), dup=(8, 4), train=TrainConfig(steps=4, batch_size=8), n_samples=6,
                   sampler=SamplerConfig(steps=3))


def test_sweep_recomputes_rows_made_under_other_settings(tmp_path, monkeypatch):
    quick = dataclasses.replace(TINY, name="quick")
    full = dataclasses.replace(TINY, name="full", train=TrainConfig(steps=6, batch_size=8), n_samples=8)
    run_sweep(quick, tmp_path)
    calls = []
    real = sweeps.run_one
    monkeypatch.setattr(sweeps, "run_one", lambda spec, cfg: calls.append(spec.key) or real(spec, cfg))
    summary = run_sweep(full, tmp_path)
    keys = {r["key"] for rows in summary["panels"].values() for r in rows}
    assert sorted(calls) == sorted(keys)  # every row shares a key with a quick row; all are recomputed
    assert all(r["settings"]["train"]["steps"] == 6 and r["settings"]["n_samples"] == 8
               for rows in summary["panels"].values() for r in rows)
    calls.clear()
    assert run_sweep(full, tmp_path)["panels"] == summary["panels"] and calls == []  # same settings: reused
    path = tmp_path / "rows" / f"{next(iter(keys))}.json"
    row = json.loads(path.read_text())
    del row["settings"]  # a row of an older diffmem, settings unknown: recomputed, not trusted
    path.write_text(json.dumps(row))
    run_sweep(full, tmp_path)
    assert calls == [next(iter(keys))]


PRUNE_SCRIPT = """
import sys
from test_pruning import flat
from test_training import tiny
from diffmem.mitigations import prune_table
from diffmem.mitigations.prune_backends import world_inputs
from diffmem.worlds.world import load_world
world = load_world(tiny(world="digits-dit", steps=2), progress=False)
inputs = world_inputs(world, features=flat)
settings = prune_table.TableSettings(ratio=0.25, runs=2, num_batches=1, finetune_steps=2, n_samples=6,
                                     sample_steps=2)
prune_table.run_table(inputs.subject, inputs.evaluation, inputs.recipe, sys.argv[1], settings=settings,
                      methods=sys.argv[2].split(","))
"""


def test_two_concurrent_prunes_give_both_method_sets(tmp_path):
    from diffmem.worlds.world import load_world

    load_world(tiny(world="digits-dit", steps=2), progress=False)  # trained once, shared through DIFFMEM_HOME
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(PRUNE_SCRIPT), str(out), methods],
                              env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
             for methods in ("original,random", "importance,finetune-only")]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    summary = read_json(out / "summary.json")
    assert set(summary["methods"]) == {"original", "random", "importance", "finetune-only"}
    assert all(summary["methods"][m]["runs"] == 2 for m in summary["methods"])
    assert set(read_json(out / "methods.json")) == set(summary["methods"])
