"""Property-based fuzzing of the readers, the similarity inputs and the command line: every generated input gives a
one-line user error (ValueError / FileNotFoundError / PermissionError, or exit code 2) or a result whose values are
checked against an independent computation; never a traceback, never a silently wrong value.

Inputs are derandomized (the same examples on every run) and the example counts are fixed per entry point
(:data:`EXAMPLES`), so the suite is reproducible and runs in seconds."""

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffmem.adapters.subject import read_manifest
from diffmem.images import read_image
from diffmem.io import write_arrays
from diffmem.similarity.inputs import load_tensor, memorization_summary
from diffmem.worlds.custom import load_collection

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)
EXAMPLES = {"manifest": 150, "npz": 150, "folder": 40, "safetensors": 150, "similarity": 150, "cli": 60}


def fuzz(name):
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def user_error(fn, *args, **kwargs):
    """fn's result, or None when it refused with a one-line user error (any other exception fails the test)."""
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as err:
        assert str(err) and "\n" not in str(err), f"not one line: {err!r}"
        return None


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                       max_size=3), max_leaves=6)
rows = st.fixed_dictionaries({}, optional={"prompt": st.one_of(st.text(max_size=10), json_values),
                                           "image": st.sampled_from(["0.png", "missing.png", "", "..", "sub/0.png"])
                                           | json_values,
                                           "kind": st.sampled_from(["planted", "novel"]) | json_values,
                                           "id": json_values})
valid_rows = st.fixed_dictionaries({"prompt": st.text(max_size=10), "image": st.just("0.png")},
                                   optional={"kind": st.sampled_from(["planted", "novel"]), "id": json_values})
lines = st.one_of(valid_rows.map(json.dumps), valid_rows.map(json.dumps), rows.map(json.dumps),
                  json_values.map(json.dumps), st.text(max_size=20), st.just(""))


def _workdir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="diffmem-fuzz-"))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(d / "0.png")
    return d


@fuzz("manifest")
@given(st.lists(lines, min_size=0, max_size=4))
def test_manifest_reader(content):
    d = _workdir()
    (d / "m.jsonl").write_text("\n".join(content), encoding="utf-8", errors="surrogatepass") if all(
        "\ud800" > c or c > "\udfff" for line in content for c in line) else (d / "m.jsonl").write_text("")
    got = user_error(read_manifest, d / "m.jsonl")
    if got is not None:
        assert got and all(isinstance(r["prompt"], str) and Path(r["image"]).is_file() for r in got)
        assert all(isinstance(r["kind"], str) for r in got)


dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_])
shapes = st.lists(st.integers(0, 5), min_size=1, max_size=5).map(tuple)


@st.composite
def npz_files(draw):
    dtype = draw(dtypes)
    plausible = draw(st.booleans())
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)) if plausible else shapes)
    n = int(np.prod(shape))
    if np.dtype(dtype).kind == "f":
        values = st.floats(0, 1) if plausible else (st.floats(allow_nan=True, allow_infinity=True, width=32)
                                                    | st.floats(-1, 1))
        flat = draw(st.lists(values, min_size=n, max_size=n))
    elif dtype == np.bool_:
        flat = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    else:
        info = np.iinfo(dtype)
        flat = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
    arrays = {"images": np.array(flat, dtype=dtype).reshape(shape)}
    N = shape[0]
    if draw(st.booleans()):
        arrays["labels"] = np.array(draw(st.lists(st.integers(0, 2), min_size=N, max_size=N) if plausible else
                                         st.lists(st.integers(-3, 5) | st.floats(-3, 5), min_size=0, max_size=N + 1)),
                                    dtype=np.int64 if plausible else None)
    if draw(st.booleans()):
        arrays["class_names"] = np.array(draw(st.lists(st.text("abc", max_size=3), min_size=0, max_size=4)),
                                         dtype=str)
    if draw(st.booleans()):
        arrays["captions"] = np.array(draw(st.lists(st.text("ab ", max_size=4), min_size=N, max_size=N)), dtype=str)
    if plausible and "class_names" in arrays and len(arrays["class_names"]) < 3:
        del arrays["class_names"]  # keep the plausible case in range; out-of-range names are the other branch
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    cut = draw(st.none() | st.integers(0, len(raw)))
    if plausible:
        return arrays, raw, draw(st.none() | st.integers(1, min(shape[1:])))
    return arrays, raw if cut is None else raw[:cut], draw(st.none() | st.integers(-1, 6))


@fuzz("npz")
@given(npz_files())
def test_npz_reader(case):
    arrays, raw, size = case
    d = _workdir()
    (d / "d.npz").write_bytes(raw)
    got = user_error(load_collection, d / "d.npz", image_size=size)
    if got is None:
        return
    x, labels, captions, names = got
    N = arrays["images"].shape[0]
    assert x.shape[0] == N and x.shape[1] in (1, 3) and x.shape[2] == x.shape[3] >= 1
    assert bool(torch.isfinite(x).all()) and x.min() >= -1 and x.max() <= 1
    assert labels.shape == (N,) and labels.dtype == torch.int64
    if "labels" in arrays:  # kept exactly, integer and in range
        assert labels.tolist() == arrays["labels"].astype(np.int64).tolist() and labels.min() >= 0
        assert names is None or labels.max() < len(names)
    else:
        assert (labels == -1).all()


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]


@st.composite
def folders(draw):
    files, plausible = [], draw(st.booleans())
    for _ in range(draw(st.integers(3, 5))):
        mode = draw(st.sampled_from(MODES))
        w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        if plausible:
            w, h = draw(st.integers(4, 12)), draw(st.integers(4, 12))
        seed = draw(st.integers(0, 2**16))
        files.append((mode, w, h, seed, plausible))
    junk = None if plausible else draw(st.none() | st.binary(max_size=40))
    size = draw(st.integers(1, 4)) if plausible else draw(st.none() | st.integers(1, 8))
    return files, junk, size, draw(st.none() | st.booleans())


def _image(mode, w, h, seed, plausible):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":  # otherwise some values above 16 bits
        return Image.fromarray(rng.integers(0, 65536 if plausible else 70000, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(0.0 if plausible else -0.2, 1.0, (h, w)).astype(np.float32))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


@fuzz("folder")
@given(folders())
def test_folder_reader(case):
    files, junk, size, grey = case
    d = Path(tempfile.mkdtemp(prefix="diffmem-fuzz-"))
    paths = []
    for i, (mode, w, h, seed, plausible) in enumerate(files):
        p = d / f"{i}.{'tif' if mode in ('CMYK', 'I', 'F') else 'png'}"
        _image(mode, w, h, seed, plausible).save(p)
        paths.append(p)
    if junk is not None:
        (d / "zz.png").write_bytes(junk)
    got = user_error(load_collection, d, image_size=size, grey=grey)
    if got is None:
        return
    x = got[0]
    assert bool(torch.isfinite(x).all()) and x.min() >= -1 and x.max() <= 1
    read = [p for p in sorted(d.rglob("*")) if p.suffix in (".png", ".jpg", ".jpeg")]
    assert len(x) == len(read)
    for i, p in enumerate(read):  # each image is its own: what the reader gives for it alone
        alone = read_image(p, size=x.shape[-1], channels=x.shape[1])
        assert torch.equal(x[i], torch.from_numpy((alone * 2 - 1).astype(np.float32)))


@st.composite
def safetensor_bytes(draw):
    t = torch.tensor(draw(st.lists(st.floats(width=32), min_size=0, max_size=6)), dtype=torch.float32)
    t = t.reshape(draw(st.sampled_from([(-1,), (1, -1), (-1, 1)]))) if t.numel() else t
    buf = Path(tempfile.mkdtemp(prefix="diffmem-fuzz-")) / "x.safetensors"
    write_arrays(buf, {draw(st.sampled_from(["x", "y"])): t})
    raw = bytearray(buf.read_bytes())
    how = draw(st.sampled_from(["keep", "cut", "flip", "random", "header"]))
    if how == "cut":
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    elif how == "random":
        raw = bytearray(draw(st.binary(max_size=64)))
    elif how == "header":
        raw[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(raw), t, draw(st.none() | st.sampled_from(["x", "y", "z"]))


@fuzz("safetensors")
@given(safetensor_bytes())
def test_safetensors_reader(case):
    raw, t, key = case
    p = Path(tempfile.mkdtemp(prefix="diffmem-fuzz-")) / "x.safetensors"
    p.write_bytes(raw)
    got = user_error(load_tensor, p, key)
    if got is not None:
        assert got.numel() and got.shape[0] and bool(torch.isfinite(got).all())


def _brute_ratio(samples: np.ndarray, refs: np.ndarray, threshold: float) -> float | None:
    """Memorization ratio by brute force on distinct references; None when a ratio lies at the threshold."""
    refs = np.unique(refs.reshape(len(refs), -1), axis=0)
    q = samples.reshape(len(samples), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.sqrt(((q[:, None] - refs[None]) ** 2).sum(-1))
    if not np.isfinite(d).all():
        return None
    d.sort(1)
    ratio = np.where(d[:, 1] > 0, d[:, 0] / np.where(d[:, 1] > 0, d[:, 1], 1), 0.0)
    if np.any(np.abs(ratio - threshold) < 1e-9):
        return None
    return float((ratio <= threshold).mean())


small = st.integers(-4, 4).map(float) | st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def similarity_inputs(draw):
    plausible = draw(st.booleans())
    D = draw(st.integers(1, 3))
    Dr = D if plausible else draw(st.sampled_from([D, D, D + 1]))
    n, m = (draw(st.integers(1, 5)), draw(st.integers(3, 6))) if plausible else (draw(st.integers(0, 5)),
                                                                                 draw(st.integers(0, 6)))
    values = st.integers(-4, 4).map(float) if plausible else small
    samples = np.array(draw(st.lists(values, min_size=n * D, max_size=n * D))).reshape(n, D)
    refs = np.array(draw(st.lists(values, min_size=m * Dr, max_size=m * Dr))).reshape(m, Dr)
    threshold = draw(st.floats(0.01, 0.99) | st.sampled_from([1 / 3, 0.5, 0.1]) if plausible else
                     st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1 / 3, 0.5, 0.1]))
    return samples, refs, threshold, draw(st.integers(1, 8) if plausible else st.integers(-2, 8))


@fuzz("similarity")
@given(similarity_inputs())
def test_similarity_inputs(case):
    samples, refs, threshold, k = case
    got = user_error(memorization_summary, torch.from_numpy(samples), torch.from_numpy(refs), threshold=threshold,
                     k=k)
    if got is None:
        return
    assert np.isfinite(samples).all() and np.isfinite(refs).all() and 0 < threshold < 1 and k >= 1
    assert 0 <= got["memorization_ratio"] <= 1 and np.isfinite(got["nn_ratio_median"])
    expect = _brute_ratio(samples, refs, threshold)
    if expect is not None:
        assert got["memorization_ratio"] == pytest.approx(expect, abs=1e-12)


bad_ints = st.one_of(st.integers(max_value=0).map(str), st.text(max_size=5).filter(lambda s: not s.strip().isdigit()),
                     st.floats().map(repr))


@fuzz("cli")
@given(st.sampled_from([("analyze", "--per-kind"), ("analyze", "--steps")]), bad_ints)
def test_cli_numeric_flags_refuse_bad_values(flag, value):
    """Bad numbers are refused before a world is loaded or trained: exit code 2, never a run. (``world-report
    --samples/--steps`` join when the world-report fix lands; see test_hardening.)"""
    from diffmem.cli.main import main

    command, name = flag
    out = tempfile.mkdtemp(prefix="diffmem-fuzz-")
    argv = {"world-report": ["world-report", "digits-t2i"], "analyze": ["analyze", "kim"]}[command]
    try:
        code = main([*argv, "--out", out, f"{name}={value}"])
    except SystemExit as stop:  # argparse: not a number
        code = stop.code
    assert code == 2
