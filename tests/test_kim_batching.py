"""``analyze kim --batch-size``: seeds in forward batches give the records of one batch (Kim et al., 2025, A1–A5)."""

import json
from dataclasses import fields

import pytest
import torch

from diffmem.analyses.kim import KimConfig, _chunks, run_kim
from diffmem.cli.main import main
from diffmem.runners.kim import kim_world_subject
from diffmem.subject import closed_form_subject
from helpers import ToyMemorizer
from roundoff import order_atol

SEEDS = 4  # batch 3 leaves a chunk of 1: both a full and a ragged batch


def _cfg(batch_size):
    return KimConfig(n_seeds=SEEDS, draws=4, sweep=(1.0, 4.0), n_boot=50, batch_size=batch_size)


def _values(record) -> dict:
    """Every number of a per-prompt record, flattened: name -> float64 tensor."""
    out = {}
    for f in fields(record):
        v = getattr(record, f.name)
        items = v.items() if isinstance(v, dict) else [("", v)]
        for k, x in items:
            if isinstance(x, torch.Tensor) or (isinstance(x, int | float) and not isinstance(x, bool)):
                out[f"{f.name}.{k}"] = torch.as_tensor(x, dtype=torch.float64)
    return out


def _compare(a: list, b: list, exact: bool) -> None:
    assert [r.id for r in a] == [r.id for r in b]
    for ra, rb in zip(a, b, strict=True):
        va, vb = _values(ra), _values(rb)
        assert va.keys() == vb.keys()
        for k in va:
            atol = 0.0 if exact else order_atol(va[k].float(), vb[k].float())
            torch.testing.assert_close(va[k], vb[k], rtol=0, atol=atol, equal_nan=True, msg=f"{ra.id} {k}")


def test_chunks_cover_the_seeds_in_order():
    assert _chunks(_cfg(None)) == [[0, 1, 2, 3]]
    assert _chunks(_cfg(3)) == [[0, 1, 2], [3]]
    assert _chunks(_cfg(9)) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        KimConfig(batch_size=0)


@pytest.fixture
def memorizer():
    """The exact memorizer of Kim et al. as a subject: every step is elementwise per seed, so the batching cannot
    change a bit."""
    from diffmem.schedules import DiscreteSchedule

    train = torch.randn(2, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return closed_form_subject(ToyMemorizer(train[:1], DiscreteSchedule.named("scaled_linear")), train, steps=8)


def test_per_seed_computation_is_bitwise_equal_at_any_batch_size(memorizer, tmp_path):
    ref = run_kim(memorizer, _cfg(None))
    for b in (1, 3):
        _compare(ref.prompts, run_kim(memorizer, _cfg(b)).prompts, exact=True)
    # the batch size is no setting of a saved prompt: a run resumed at another batch size reuses it
    run_kim(memorizer, _cfg(1), units=tmp_path)
    todo = []
    again = run_kim(memorizer, _cfg(None), units=tmp_path, progress=lambda k, n: todo.append(n))
    assert todo == [0]
    _compare(ref.prompts, again.prompts, exact=True)


def test_tiny_world_records_agree_to_round_off_at_any_batch_size(tmp_path, monkeypatch):
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    subject = kim_world_subject(load_world(tiny(steps=2), progress=False), steps=4, per_kind=2)
    ref = run_kim(subject, _cfg(None))
    assert ref.config.batch_size is None and ref.provenance.seeds == list(range(SEEDS))
    for b in (1, 3):
        res = run_kim(subject, _cfg(b))
        assert res.config.batch_size == b and res.provenance.seeds == list(range(SEEDS))
        _compare(ref.prompts, res.prompts, exact=False)


def test_cli_batch_size_in_dry_run_and_bad_values(tmp_path, capsys):
    argv = ["analyze", "kim", "--out", str(tmp_path / "o"), "--quick", "--dry-run"]
    assert main([*argv, "--batch-size", "3"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["batch_size"] == 3 and plan["device"] == "cpu"  # an embedded world runs on the CPU, GPU or not
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] is None  # all seeds of a prompt at once
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--batch-size", "0"])
    assert exit_.value.code == 2 and "expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert main(["analyze", "kim-theory", "--out", str(tmp_path / "t"), "--batch-size", "2", "--quick"]) == 2
    assert "--batch-size belongs to 'analyze kim'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
