"""``diffmem analyze kim``: resume after a kill, prompts-only manifests, --refs, inputs checked before the model."""

import json

import numpy as np
import pytest
import torch

from diffmem.analyses import kim as kim_module
from diffmem.analyses.kim import KimResult
from diffmem.cli.main import main


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    return str(load_world(tiny(steps=2), progress=False).directory)


def _argv(world, out, *extra):
    return ["analyze", "kim", "--world", world, "--out", str(out), "--quick", "--steps", "4", "--seeds", "2",
            "--per-kind", "2", "-q", *extra]


def test_kill_and_resume_per_prompt(tiny_world, tmp_path, monkeypatch, capsys):
    calls = []
    real = kim_module.analyze_prompt

    def killed_at_third(subject, p, cfg):
        calls.append(p.id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) during the third prompt
        return real(subject, p, cfg)

    monkeypatch.setattr(kim_module, "analyze_prompt", killed_at_third)
    out = tmp_path / "run"
    assert main(_argv(tiny_world, out)) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "units").iterdir()) == [f"prompt-0000{i}.{e}" for i in (0, 1)
                                                                 for e in ("json", "safetensors")]
    # other settings never mix with the saved prompts
    assert main(_argv(tiny_world, out, "--guidance", "3")) == 2
    assert "other settings" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(kim_module, "analyze_prompt", lambda *a: (calls.append(a[1].id), real(*a))[1])
    assert main(_argv(tiny_world, out)) == 0
    assert len(calls) == 2  # only the two prompts the first run did not finish
    assert not (out / "units").exists()  # no intermediate file is left
    assert {p.name for p in out.iterdir()} >= {"summary.json", "kimresult.json", "kimresult.safetensors"}
    # identical to an uninterrupted run
    assert main(_argv(tiny_world, tmp_path / "whole")) == 0
    a, b = KimResult.load(out), KimResult.load(tmp_path / "whole")
    assert [p.id for p in a.prompts] == [p.id for p in b.prompts] and len(a.prompts) == 4
    for pa, pb in zip(a.prompts, b.prompts, strict=True):
        assert pa.D1 == pb.D1 and pa.severity == pb.severity and torch.equal(pa.loss_guided, pb.loss_guided)
    assert a.summary.to_dict() == b.summary.to_dict()


def test_refs_replace_the_copy_rule_references(tiny_world, tmp_path, capsys):
    refs = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)  # the digits worlds' 8x8 grey images
    np.savez(tmp_path / "refs.npz", images=refs)
    assert main(_argv(tiny_world, tmp_path / "r", "--refs", str(tmp_path / "refs.npz"), "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    res = KimResult.load(tmp_path / "r")
    # random references are never the paired training image: nothing is a copy under the paired 1/3 rule
    assert all(p.severity["copy_rate"] == 0.0 for p in res.prompts) and summary["n_prompts"] == 4


def _tiny_sd(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers_tiny import tiny_sd_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "sd")
    return tmp_path / "sd"


def test_prompts_only_manifest_runs_the_training_data_free_analyses(tmp_path, capsys):
    from PIL import Image

    sd = _tiny_sd(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "refs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "refs" / f"{i}.png")
    rows = [{"prompt": f"a photo of thing {i}", "kind": "unknown"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["analyze", "kim", "--model", str(sd), "--prompts", str(tmp_path / "m.jsonl"), "--out",
            str(tmp_path / "out"), "--steps", "4", "--seeds", "2", "--quick", "--refs", str(tmp_path / "refs"),
            "--device", "cpu", "-q", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "n_prompts" not in summary and [r["id"] for r in summary["selfref"]] == ["0", "1", "2"]
    assert set(summary["skipped"]) == {"A1 guided loss, A2 noise content, D1/D2 against the training image, "
                                       "severity and the A5 sweep", "correlation of D with severity"}
    assert all(np.isfinite(r["D1_selfref"]) and 0 <= r["copy_rate_refs"] <= 1 for r in summary["selfref"])
    assert printed["n_prompts_without_image"] == 3
    res = KimResult.load(tmp_path / "out")
    assert res.summary is None and res.prompts == [] and res.selfref[0].w0_selfref.shape == (4,)
    assert not (tmp_path / "out" / "units").exists()


def test_inputs_are_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    from diffmem.adapters.diffusers_sd import StableDiffusionAdapter

    def never(*a, **k):
        raise AssertionError("the model was loaded before the manifest was checked")

    monkeypatch.setattr(StableDiffusionAdapter, "from_pretrained", classmethod(never))
    (tmp_path / "m.jsonl").write_text('{"prompt": "a", "image": "missing.png"}\n')
    assert main(["analyze", "kim", "--model", str(tmp_path), "--prompts", str(tmp_path / "m.jsonl"),
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and err.count("\n") == 1
