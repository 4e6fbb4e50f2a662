"""Bad input at the boundary of the library: one-line ValueError / FileNotFoundError / PermissionError naming the value
and the fix, never a traceback from deep inside, never a silently wrong result. One test per reported case."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffmem.adapters.local import check_pipeline_dir
from diffmem.adapters.subject import read_manifest
from diffmem.images import check_memory
from diffmem.io import check_device, check_out_dir, check_safetensors, read_arrays, strict_json, write_arrays
from diffmem.similarity.duplicates import near_duplicates
from diffmem.similarity.inputs import check_ratio_threshold, load_tensor, memorization_summary
from diffmem.worlds.custom import load_collection
from diffmem.worlds.world import load_world, train_world
from test_training import tiny

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))


# --- world checkpoints: never a silently untrained model ---------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    return train_world(tiny(steps=2), tmp_path / "ckpt", progress=False)


def test_checkpoint_without_weights_is_refused_not_retrained(checkpoint):
    (checkpoint / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_world(checkpoint)
    assert "weights.safetensors" in one_line(e) and not (checkpoint / "weights.safetensors").exists()


def test_truncated_checkpoint_is_refused(checkpoint):
    w = checkpoint / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as e:
        load_world(checkpoint)
    one_line(e)


def test_checkpoint_of_another_shape_is_refused(checkpoint):
    w = read_arrays(checkpoint / "weights.safetensors")
    k = next(k for k, v in w.items() if v.ndim == 2)
    w[k] = torch.zeros(w[k].shape[0] + 1, w[k].shape[1])
    write_arrays(checkpoint / "weights.safetensors", w)
    with pytest.raises(ValueError, match="another shape") as e:
        load_world(checkpoint)
    one_line(e)


def test_folder_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(USER_ERRORS):
        load_world(tmp_path / "x")


# --- safetensors given to similarity ------------------------------------------------------------------------------

def test_safetensors_missing_text_truncated_oversized(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tensor(tmp_path / "none.safetensors")
    (tmp_path / "t.safetensors").write_text("hello, not tensors\n" * 10)
    (tmp_path / "e.safetensors").write_bytes(b"")
    (tmp_path / "h.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    write_arrays(tmp_path / "ok.safetensors", {"x": torch.arange(100.0).reshape(10, 10)})
    raw = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-7])
    for name in ("t", "e", "h", "cut"):
        with pytest.raises(ValueError) as e:
            load_tensor(tmp_path / f"{name}.safetensors")
        assert f"{name}.safetensors" in one_line(e)
    assert torch.equal(load_tensor(tmp_path / "ok.safetensors"), torch.arange(100.0).reshape(10, 10))


def test_similarity_values_are_checked(tmp_path):
    write_arrays(tmp_path / "nan.safetensors", {"x": torch.tensor([[0.0], [float("nan")]])})
    write_arrays(tmp_path / "empty.safetensors", {"x": torch.zeros(0, 3)})
    write_arrays(tmp_path / "two.safetensors", {"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)})
    for name, match in (("nan", "NaN"), ("empty", "non-empty"), ("two", "choose one")):
        with pytest.raises(ValueError, match=match):
            load_tensor(tmp_path / f"{name}.safetensors")
    for bad in (float("nan"), float("inf"), 0.0, 1.0, -0.5, True, "0.3"):
        with pytest.raises(ValueError, match="threshold"):
            check_ratio_threshold(bad)
    with pytest.raises(ValueError, match="finite"):
        near_duplicates(torch.zeros(3, 2), float("nan"))


def test_memorization_summary_value():
    refs = torch.tensor([[0.0], [10.0], [20.0]])
    samples = torch.tensor([[0.5], [5.0], [19.0]])  # ratios 0.5/9.5, 5/5, 1/9
    s = memorization_summary(samples, refs, threshold=1 / 3, k=3)
    assert s["memorization_ratio"] == pytest.approx(2 / 3) and s["distinct_nearest_refs"] == 2
    with pytest.raises(ValueError, match="item shape"):
        memorization_summary(samples, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="threshold"):
        memorization_summary(samples, refs, threshold=float("nan"))


def test_strict_json_never_writes_nan():
    text = strict_json({"ratio": float("nan")})
    assert "NaN" not in text and json.loads(text)["nonfinite"] == {"/ratio": "nan"}


# --- npz ----------------------------------------------------------------------------------------------------------

def _npz(tmp_path, name="d.npz", **arrays):
    arrays.setdefault("images", np.zeros((4, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("arrays, match", [
    ({"labels": np.array([0, -1, 1, 0])}, "label -1 is out of range"),
    ({"labels": np.array([0.0, 1.5, 1.0, 0.0])}, "integers"),
    ({"labels": np.array([0, 1, 2, 0]), "class_names": np.array(["a", "b"])}, "label 2 is out of range.*< 2"),
    ({"labels": np.array([0, 1])}, r"shape \[4\]"),
    ({"images": np.zeros((0, 8, 8), dtype=np.uint8)}, "empty"),
    ({"images": np.zeros((4, 8, 8), dtype=np.int32)}, "dtype int32"),
    ({"images": np.full((4, 8, 8), 3.0)}, r"range \[3, 3\]"),
    ({"images": np.full((4, 8, 8), np.nan)}, "NaN"),
    ({"images": np.zeros((4, 2, 8, 8), dtype=np.uint8)}, "C in"),
    ({"captions": np.array(["a", "b"])}, "2 captions"),
])
def test_bad_npz_is_refused(tmp_path, arrays, match):
    with pytest.raises(ValueError, match=match) as e:
        load_collection(_npz(tmp_path, **arrays), image_size=8)
    one_line(e)


def test_npz_truncated_missing_key_and_objects(tmp_path):
    raw = _npz(tmp_path).read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable .npz") as e:
        load_collection(tmp_path / "cut.npz")
    one_line(e)
    np.savez(tmp_path / "nokey.npz", pixels=np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="no 'images'"):
        load_collection(tmp_path / "nokey.npz")
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(ValueError, match="never unpickles"):
        load_collection(tmp_path / "obj.npz")


def test_npz_values_and_labels_are_kept(tmp_path):
    imgs = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8) * 255
    x, labels, _, names = load_collection(_npz(tmp_path, images=imgs, labels=np.array([0, 1, 1, 0])))
    torch.testing.assert_close(x[:, 0], torch.from_numpy(imgs / 65535.0 * 2 - 1).float(), rtol=0, atol=1e-6)
    assert labels.tolist() == [0, 1, 1, 0] and names == ["class0", "class1"]


def test_image_size_needing_tebibytes_is_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match="TiB") as e:
        load_collection(_npz(tmp_path), image_size=300_000)
    one_line(e)
    with pytest.raises(ValueError, match="positive integer"):
        load_collection(_npz(tmp_path), image_size=0)
    check_memory(1e6, "a small job")


# --- folders and manifests ----------------------------------------------------------------------------------------

def _folder(root, n=3):
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("line, match", [
    ('{"text": "no file name"}', "file_name"),
    ('["0.png", "a list"]', "JSON object"),
    ("not json", "not JSON"),
    ('{"file_name": 3, "text": "x"}', "file_name"),
])
def test_bad_metadata_jsonl(tmp_path, line, match):
    root = _folder(tmp_path / "f")
    (root / "metadata.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=match) as e:
        load_collection(root)
    one_line(e)


@pytest.mark.parametrize("line, match", [
    ('["a", "list"]', "JSON object"),
    ('{"prompt": "p"}', "'image'"),
    ('{"prompt": 3, "image": "0.png"}', "'prompt'"),
    ('{"prompt": "p", "image": "nope.png"}', "does not exist"),
    ('{"prompt": "p", "image": "0.png", "kind": 7}', "'kind'"),
    ("{", "not JSON"),
    ("[" * 100000, "not JSON"),
])
def test_bad_manifest_lines(tmp_path, line, match):
    _folder(tmp_path / "f")
    (tmp_path / "f" / "m.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=match) as e:
        read_manifest(tmp_path / "f" / "m.jsonl")
    one_line(e)


def test_empty_manifest_and_missing_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no rows"):
        read_manifest(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")


# --- output folders, devices --------------------------------------------------------------------------------------

def test_out_naming_a_file_or_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file") as e:
        check_out_dir(tmp_path / "file")
    one_line(e)
    with pytest.raises(PermissionError):
        check_out_dir(tmp_path / "file" / "below")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            check_out_dir(ro)
    assert check_out_dir(tmp_path / "new" / "deeper").is_dir()


def test_devices():
    assert check_device("cpu") == torch.device("cpu")
    for bad in ("bogus", "cuda:banana", ""):
        with pytest.raises(ValueError, match="device"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            check_device("cuda")


# --- diffusers folders: safetensors only, whole ---------------------------------------------------------------------

def _pipeline_dir(tmp_path, weight_name, data):
    root = tmp_path / "pipe"
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "X", "unet": ["diffusers", "UNet2DModel"]}))
    (root / "unet" / "config.json").write_text("{}")
    (root / "unet" / weight_name).write_bytes(data)
    return root


def test_diffusers_bin_only_weights_are_refused(tmp_path):
    root = _pipeline_dir(tmp_path, "diffusion_pytorch_model.bin", b"PK\x03\x04 pickle")
    with pytest.raises(ValueError, match="pickle weights.*safetensors only") as e:
        check_pipeline_dir(root, ["unet"])
    one_line(e)


def test_diffusers_truncated_weights_are_refused(tmp_path):
    write_arrays(tmp_path / "w.safetensors", {"w": torch.zeros(64, 64)})
    raw = (tmp_path / "w.safetensors").read_bytes()
    root = _pipeline_dir(tmp_path, "diffusion_pytorch_model.safetensors", raw[:-1000])
    with pytest.raises(ValueError, match="truncated") as e:
        check_pipeline_dir(root, ["unet"])
    one_line(e)
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(raw)
    assert check_pipeline_dir(root, ["unet"])["unet"] == ["diffusers", "UNet2DModel"]
    assert check_safetensors(root / "unet" / "diffusion_pytorch_model.safetensors")["w"]["shape"] == [64, 64]


# --- flags honoured or refused ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"samples": 0}, {"steps": 0}, {"samples": -3}])
def test_world_report_refuses_zero_samples_or_steps(tmp_path, kw, monkeypatch):
    from diffmem.worlds.report import world_report

    def no_training(*a, **k):
        raise AssertionError("a world was loaded with a bad value")

    monkeypatch.setattr("diffmem.worlds.report.load_world", no_training)
    with pytest.raises(ValueError, match="samples >= 1, steps >= 1"):
        world_report("digits-t2i", tmp_path / "out", **kw)  # refused before a world is loaded or trained
    assert not (tmp_path / "out").exists()


def test_kim_prompts_without_model_and_bad_per_kind_are_refused(tmp_path):
    from diffmem.runners.kim import analyze_kim

    (tmp_path / "m.jsonl").write_text('{"prompt": "p", "image": "x.png"}\n')
    with pytest.raises(ValueError, match="--prompts goes with --model"):
        analyze_kim(tmp_path / "out", prompts=tmp_path / "m.jsonl")
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="--per-kind"):
            analyze_kim(tmp_path / "out", per_kind=bad)
    with pytest.raises(ValueError, match="do not go with --model"):
        analyze_kim(tmp_path / "out", model=tmp_path, prompts=tmp_path / "m.jsonl", per_kind=2)


def test_stale_marking_and_tmp_cleanup(tmp_path):
    from diffmem.io import mark_stale, remove_stale_tmp

    (tmp_path / "summary.json").write_text("{}")
    tmp = tmp_path / "sub" / ".weights.safetensors.abc.tmp"
    tmp.parent.mkdir()
    tmp.write_bytes(b"x" * 100)
    fresh = tmp_path / ".summary.json.def.tmp"
    fresh.write_bytes(b"in flight")
    os.utime(tmp, (0, 0))
    assert mark_stale(tmp_path, ["summary.json", "absent.json"]) == [tmp_path / "summary.json"]
    assert (tmp_path / "summary.json.stale").exists() and not (tmp_path / "summary.json").exists()
    assert remove_stale_tmp(tmp_path) == [tmp] and fresh.exists()  # a writer's file in flight is kept
    shutil.rmtree(tmp_path / "sub")


HOLD = """
import sys, time
from diffmem.io import claim_out_dir
claim_out_dir(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_second_writer_of_an_out_folder_is_refused(tmp_path):
    import subprocess
    import sys

    from diffmem.io import claim_out_dir

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="in use by another diffmem process") as e:
            claim_out_dir(tmp_path / "out")
        one_line(e)
        from diffmem.cli.main import main

        for argv in (["theory", "loss-gap"], ["world-report", "digits-t2i", "--quick"], ["analyze", "kim"],
                     ["detect", "--world", "digits-t2i"], ["audit", "--world", "digits-t2i"], ["demo"]):
            assert main([*argv, "--out", str(tmp_path / "out")]) == 2, argv  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    assert claim_out_dir(tmp_path / "out") == claim_out_dir(tmp_path / "out")  # free again; reclaiming is a no-op


def test_a_command_holds_its_out_folder_only_while_it_runs(tmp_path, monkeypatch):
    from diffmem import io
    from diffmem.cli.main import main
    from diffmem.theory import lab

    seen = []
    monkeypatch.setattr(lab, "run_loss_gap", lambda out, **kw: seen.append(Path(out).resolve() in io._CLAIMS) or
                        (_ for _ in ()).throw(ValueError("stop here")))
    assert main(["theory", "loss-gap", "--out", str(tmp_path / "o")]) == 2
    assert seen == [True] and (tmp_path / "o").resolve() not in io._CLAIMS  # held during the run, released after
