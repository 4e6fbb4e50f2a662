"""``diffmem detect`` and ``diffmem audit`` end to end on a tiny trained world."""

import csv
import json

import numpy as np
import pytest

from diffmem.cli.main import main
from diffmem.detectors.harness import CSV_COLUMNS
from diffmem.worlds.world import load_world
from test_training import tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(tmp_path_factory.mktemp("home")))
        yield load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}), progress=False)


def test_detect_cli_writes_summary_and_scores(world, tmp_path, capsys):
    args = ["detect", "--world", str(world.directory), "--out", str(tmp_path), "--quick", "--steps", "4",
            "--detectors", "wen-step1,wen-all", "--n-gen", "1,2", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wen-step1" in printed and "AUC" in printed
    assert "\nreused " in printed and "\nout " in printed  # the summary lines after the table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["detector"], r["n_gen"], r["label"]) for r in summary["rows"]} == {
        (d, n, lab) for d in ("wen-step1", "wen-all") for n in (1, 2) for lab in ("planted", "measured")}
    assert summary["rows"][0]["nfe_per_generation"] > 0
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == summary["provenance"]["subject"]["n_prompts"] * 4
    assert main([*args, "--labels", "planted,typo"]) == 2  # a refused rerun changes nothing: no stale marking
    assert (tmp_path / "summary.json").exists() and not (tmp_path / "summary.json.stale").exists()
    assert main([*args, "--json"]) == 0
    assert (tmp_path / "summary.json.stale").exists()  # a rerun that starts marks the old result first
    again = json.loads(capsys.readouterr().out)  # --json: one object, nothing else
    assert again["command"] == "detect" and again["reused"] > 0 and again["computed"] == 0  # resumes


def test_audit_cli_ranks_escalates_and_compares(world, tmp_path, capsys):
    refs = tmp_path / "refs.npz"
    np.savez(refs, images=((world.train_images().numpy() + 1) / 2))
    args = ["audit", "--world", str(world.directory), "--out", str(tmp_path / "a"), "--steps", "4",
            "--fraction", "0.25", "--threshold", "0.0", "--refs", str(refs), "--compare-full", "--no-progress"]
    assert main([*args, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "a").exists()  # a dry run writes nothing, not even the folder
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    result = json.loads((tmp_path / "a/audit.json").read_text())
    P = len(result["rows"])
    k = int(np.ceil(0.25 * P))
    assert out["nfe"]["screen"] == 2 * P and out["nfe"]["escalate"] == 2 * 4 * k and out["nfe"]["samples"] == 8 * k
    assert out["full"]["nfe"] == 2 * 4 * P and out["full"]["recall"] == pytest.approx(k / P)  # τ = 0 flags all
    with open(tmp_path / "a/audit.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, P + 1))
    top = [r for r in rows if r["escalated"] == "True"]
    assert len(top) == k and all(r["verdict"] == "memorized" and r["nearest_ref"] != "" for r in top)
    assert all((tmp_path / "a/samples" / r["sample"].split("/")[-1]).exists() for r in top)
    assert out["escalated"] == k and out["flagged"] == k and out["prompts"] == P
    # a rerun under another seed draws its samples again (the cached ones were made under seed 0)
    assert main([*args, "--json", "--seed", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["nfe"]["samples"] == 8 * k  # k samples of 4 steps, 2 NFE each
    assert main([*args, "--json", "--seed", "7"]) == 0  # same settings: every sample reused, none drawn
    assert json.loads(capsys.readouterr().out)["nfe"]["samples"] == 0
    # the plan's NFE estimate (costs measured on one prompt) is the run's count: the world's prompts cost alike
    assert plan["prompts"] == P and plan["escalated"] == k and plan["seeds"] == [0]
    assert {key: plan["nfe_estimate"][key] for key in ("screen", "escalate", "samples", "full")} == {
        "screen": out["nfe"]["screen"], "escalate": out["nfe"]["escalate"], "samples": out["nfe"]["samples"],
        "full": out["full"]["nfe"]}


def test_a_model_directory_without_a_pipeline_is_refused_in_one_line(tmp_path, capsys):
    assert main(["detect", "--model", str(tmp_path), "--prompts", "p.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "has no model_index.json" in capsys.readouterr().err


def test_detect_dry_run_prints_the_settings(world, tmp_path, capsys):
    assert main(["detect", "--world", str(world.directory), "--out", str(tmp_path), "--quick", "--dry-run",
                 "--detectors", "wen-step1", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["detectors"] == ["wen-step1"] and printed["n_gen"] == [1]
    assert not (tmp_path / "summary.json").exists()


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory):
    """A tiny random Stable Diffusion directory and a four-prompt manifest with images (two planted)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from PIL import Image

    from diffusers_tiny import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(root / "model")
    g = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(["a cat", "the dog sat", "a cat on the mat", "the mat"]):
        Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"id": f"p{i}", "prompt": text, "image": f"{i}.png",
                                 "kind": "planted" if i < 2 else "nonplanted"}))
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_detect_and_audit_take_a_local_diffusers_model(sd_model, tmp_path, capsys):
    base = ["--model", str(sd_model / "model"), "--prompts", str(sd_model / "prompts.jsonl"), "--steps", "2",
            "--threads", "1", "--no-progress"]
    args = ["detect", *base, "--out", str(tmp_path / "d"), "--detectors", "wen-step1,ren-le", "--n-gen", "1",
            "--labels", "planted"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "d/summary.json").read_text())
    assert summary["provenance"]["subject"]["n_prompts"] == 4
    assert {r["detector"] for r in summary["rows"]} == {"wen-step1", "ren-le"}
    assert main(["audit", *base, "--out", str(tmp_path / "a"), "--fraction", "0.5", "--threshold", "0.0"]) == 0
    assert len(json.loads((tmp_path / "a/audit.json").read_text())["rows"]) == 4
    capsys.readouterr()


def test_model_kind_comes_from_the_pipeline_class(sd_model, tmp_path):
    from diffmem.cli.detect import model_kind, model_subject

    assert model_kind(sd_model / "model") == "sd"
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    with pytest.raises(ValueError, match="text-to-image pipeline"):
        model_kind(tmp_path)
    with pytest.raises(ValueError, match="needs --prompts"):
        model_subject(str(sd_model / "model"), None, steps=2)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_model_dtype_reaches_the_subject_and_the_dry_run(sd_model, tmp_path, capsys, dtype):
    import torch

    from diffmem.cli.detect import build_subject

    subject = build_subject(None, str(sd_model / "model"), str(sd_model / "prompts.jsonl"), 2, False, dtype=dtype)
    assert subject.dtype == getattr(torch, dtype) and subject.device == torch.device("cpu")
    assert subject.prompts[0].x.dtype == getattr(torch, dtype)
    base = ["--model", str(sd_model / "model"), "--prompts", str(sd_model / "prompts.jsonl"), "--steps", "2",
            "--out", str(tmp_path / "o"), "--dry-run", "--threads", "1", "--dtype", dtype]
    assert main(["detect", *base, "--detectors", "wen-step1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["device"], plan["dtype"]) == ("cpu", dtype)  # --device auto on a machine without CUDA
    assert main(["audit", *base, "--screen", "wen-step1", "--expensive", "wen-step1"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["device"], plan["dtype"]) == ("cpu", dtype)
    assert not (tmp_path / "o").exists()


def test_device_and_dtype_are_refused_in_one_line(world, sd_model, tmp_path, capsys):
    import torch

    model = ["--model", str(sd_model / "model"), "--prompts", str(sd_model / "prompts.jsonl")]
    if not torch.cuda.is_available():  # a CPU-only torch: CUDA asked for is refused before anything loads
        for cmd in ("detect", "audit", "mitigate"):
            assert main([cmd, *model, "--out", str(tmp_path / cmd), "--device", "cuda"]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and "sees no CUDA GPU" in err and "--device cpu" in err
    # an embedded world runs on the CPU in float32
    assert main(["detect", "--world", str(world.directory), "--out", str(tmp_path / "w"), "--dtype", "float64",
                 "--dry-run"]) == 2
    assert "an embedded world runs on the CPU in float32" in capsys.readouterr().err


def test_the_ray_recipe_carries_device_and_dtype_unresolved(tmp_path):
    from diffmem.cli.detect import subject_recipe
    from diffmem.cli.main import build_parser

    args = build_parser("detect").parse_args(["detect", "--model", "m", "--prompts", "p", "--out", str(tmp_path),
                                              "--dtype", "bfloat16"])
    assert subject_recipe(args).keywords == {"device": "auto", "dtype": "bfloat16"}  # "auto": each worker's own
