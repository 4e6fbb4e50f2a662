"""Property-based fuzzing of the readers, the similarity inputs and the command line: every generated input gives a
one-line user error (ValueError / FileNotFoundError / PermissionError, or exit code 2) or a result whose values are
checked against an independent computation; never a traceback, never a silently wrong value.

Inputs are derandomized (the same examples on every run) and the example counts are fixed per entry point
(:data:`EXAMPLES`), so the suite is reproducible and runs in seconds."""

import io
import json
import os
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
EXAMPLES = {"manifest": 150, "npz": 150, "folder": 40, "safetensors": 150, "similarity": 150, "cli": 60,
            "data_npz": 150, "cli_values": 600, "cli_out": 60}


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


def _int_at_least(text: str, low: int) -> bool:
    try:
        return int(text) >= low
    except ValueError:
        return False


def bad_ints_below(low: int):
    """Text that is not an integer >= ``low`` (as Python's ``int`` reads it: "+5" and "1_0" are integers)."""
    return st.one_of(st.integers(max_value=low - 1).map(str), st.text(max_size=5), st.floats().map(repr)).filter(
        lambda s: not _int_at_least(s, low))


bad_ints = bad_ints_below(1)


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


# --- the data reader of diffusers DiT/PixArt models (prune --model --data) ------------------------------------------

@st.composite
def data_npz_files(draw):
    """An .npz as a user might hand to ``prune --model M --data D.npz``: images [N, 3, 4, 4] or [N, 4, 4, 3] (or any
    shape), uint8/uint16/float/other dtypes, values in and out of [0, 1] and non-finite, labels and captions of the
    right or wrong length and type, and truncated archives."""
    plausible = draw(st.booleans())
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64] if plausible else
                                 [np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.complex64]))
    N = draw(st.integers(1, 3))
    shape = draw(st.sampled_from([(N, 3, 4, 4), (N, 4, 4, 3)]) if plausible else
                 st.sampled_from([(N, 3, 4, 4), (N, 4, 4, 3), (N, 4, 4), (0, 3, 4, 4), (N, 3, 4, 5), (N,)]))
    n = int(np.prod(shape))
    if np.dtype(dtype).kind == "f":
        values = st.floats(0, 1) if plausible else (st.floats(allow_nan=True, allow_infinity=True, width=32)
                                                    | st.floats(-1, 1))
        flat = draw(st.lists(values, min_size=n, max_size=n))
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        flat = draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
    else:
        flat = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    arrays = {"images": np.array(flat).astype(dtype).reshape(shape)}
    if draw(st.booleans()):
        arrays["labels"] = np.array(draw(st.lists(st.integers(0, 3), min_size=N, max_size=N)) if plausible else
                                    draw(st.lists(st.integers(-3, 5) | st.floats(-3, 5), min_size=0, max_size=N + 1)))
    if draw(st.booleans()):
        arrays["captions"] = np.array(draw(st.lists(st.text("ab ", max_size=4), min_size=N, max_size=N))
                                      if plausible else draw(st.lists(st.integers(0, 3), min_size=N, max_size=N)))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    cut = None if plausible else draw(st.none() | st.integers(0, len(raw)))
    return arrays, raw if cut is None else raw[:cut]


@fuzz("data_npz")
@given(data_npz_files())
def test_data_npz_reader(case):
    """read_npz then to_pixels: a one-line refusal, or pixels equal to the independent conversion (uint8 / 255,
    uint16 / 65535, floats as they are, then 2x - 1), channels last moved first."""
    from diffmem.adapters.subject_data import read_npz, to_pixels

    arrays, raw = case
    d = Path(tempfile.mkdtemp(prefix="diffmem-fuzz-"))
    (d / "d.npz").write_bytes(raw)
    data = user_error(read_npz, d / "d.npz")
    if data is None:
        return
    x = user_error(to_pixels, data["images"], (3, 4, 4))
    if x is None:
        return
    a = arrays["images"]
    assert a.ndim == 4 and len(a) and a.dtype in (np.uint8, np.uint16, np.float32, np.float64)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0)
    want = torch.from_numpy(a.astype(np.float64) / scale)
    want = want if a.shape[1] == 3 else want.permute(0, 3, 1, 2)
    assert x.dtype == torch.float32 and torch.equal(x, (want.float() * 2 - 1)) and x.min() >= -1 and x.max() <= 1
    if "labels" in data:
        assert data["labels"].shape == (len(a),) and data["labels"].dtype.kind in "iu"
    if "captions" in data:
        assert data["captions"].shape == (len(a),) and data["captions"].dtype.kind in "US"


# --- every command's values: refused in one line with exit code 2, before any world loads or trains ----------------

def _not_in(choices):
    return st.text(max_size=8).filter(lambda s: s.strip() not in choices and s.strip())


def _float_outside(ok):
    """Text that is not a float for which ``ok`` holds (NaN and infinities included)."""
    def fine(text):
        try:
            return ok(float(text))
        except ValueError:
            return False

    return st.one_of(st.sampled_from(["nan", "inf", "-inf", "NaN", "x", "", "1e999"]), st.floats().map(repr),
                     st.text(max_size=5)).filter(lambda t: not fine(t))


finite = _float_outside(lambda v: v == v and abs(v) != float("inf"))
WR, AN, DT, AU = ["world-report", "digits-t2i"], ["analyze", "kim"], ["detect", "--world", "digits-t2i"], \
    ["audit", "--world", "digits-t2i"]
MI = ["mitigate", "--world", "digits-t2i"]
MR = [*MI, "--retrigger", "head-pruning"]
VALUES = [  # (argv before the flag, flag, strategy of values that must be refused)
    (WR, "--samples", bad_ints), (WR, "--steps", bad_ints), (WR, "--threads", bad_ints),
    (WR, "--weights", st.one_of(finite, st.lists(finite, min_size=2, max_size=3).map(",".join))),
    (WR, "--seed", st.text(max_size=5).filter(lambda t: not _int_at_least(t, -10**9))),
    (AN, "--per-kind", bad_ints), (AN, "--steps", bad_ints), (AN, "--seeds", bad_ints_below(2)),
    (AN, "--guidance", finite), (AN, "--primary", _not_in({"ssim", "l2_sim", "cosine", "copy_rate"})),
    (AN, "--dtype", _not_in({"float32", "float16", "bfloat16"})),
    (AN, "--device", st.sampled_from(["bogus", "cuda:x", "gpu", "cuda:99", "tpu"])),
    (DT, "--n-label", bad_ints), (DT, "--chunk", bad_ints), (DT, "--steps", bad_ints),
    (DT, "--n-gen", st.one_of(bad_ints, st.lists(bad_ints, min_size=2, max_size=3).map(",".join))),
    (DT, "--detectors", st.text("abcz-", min_size=1, max_size=6).filter(lambda t: t.strip(", "))),
    (DT, "--labels", _not_in({"planted", "measured", "planted,measured", "measured,planted"})),
    (AU, "--fraction", _float_outside(lambda v: 0 < v <= 1)), (AU, "--threshold", finite),
    (AU, "--n-gen", bad_ints), (AU, "--top", bad_ints),
    (AU, "--screen", st.text("abcz-", min_size=1, max_size=6)), (AU, "--expensive", st.text("abcz-", min_size=1,
                                                                                           max_size=6)),
    (["prune"], "--ratio", _float_outside(lambda v: 0 <= v < 1)), (["prune"], "--runs", bad_ints),
    (["prune"], "--samples", bad_ints), (["prune"], "--batches", bad_ints), (["prune"], "--score-samples", bad_ints),
    (["prune"], "--finetune-steps", bad_ints_below(0)), (["prune"], "--steps", bad_ints),
    (["prune"], "--batch-size", bad_ints), (["prune"], "--preprocess", st.text(max_size=6)),
    (["prune"], "--law", _not_in({"beta", "uniform"})),
    (["prune"], "--methods", st.text("abz-,", min_size=1, max_size=6).filter(lambda t: t not in ("all", "table"))),
    (["demo"], "--samples", bad_ints_below(2)), (["demo"], "--steps", bad_ints),
    (["train", "digits-t2i"], "--steps", bad_ints), (["train", "digits-t2i"], "--duplicates", bad_ints),
    (["train", "digits-t2i"], "--planted", bad_ints_below(0)), (["train", "digits-t2i"], "--image-size",
                                                                bad_ints_below(4)),
    (["theory", "sweep"], "--preset", _not_in({"quick", "default"})),
    (["similarity", "memorization"], "--threshold", _float_outside(lambda v: 0 < v < 1)),
    (["similarity", "memorization"], "--k", bad_ints),
    (["similarity", "duplicates"], "--threshold", _float_outside(lambda v: v >= 0)),
    (["report"], "--dpi", bad_ints_below(10)),
    (MI, "--gate-fpr", _float_outside(lambda v: 0 < v < 1)), (MI, "--guidance", _float_outside(lambda v: v >= 0)),
    (MI, "--n-gen", bad_ints), (MI, "--negatives-per-kind", bad_ints),
    (MI, "--methods", st.text("abcz-", min_size=1, max_size=6).filter(lambda t: t.strip(", "))),
    (MI, "--gate", st.text("abcz-", min_size=1, max_size=6)),
    (MI, "--retrigger", st.sampled_from(["jain-stp", "nope", "ours-overshoot"])),
    (MR, "--workers", st.sampled_from(["1", "2"])), (MR, "--triggers", bad_ints), (MR, "--probe-steps", bad_ints),
    (MR, "--probe-lr", _float_outside(lambda v: v > 0)), (MR, "--probe-budget", _float_outside(lambda v: v > 0)),
    (["analyze", "kim-theory"], "--workers", st.sampled_from(["1", "2"])),
    (["analyze", "kim-theory"], "--per-kind", st.sampled_from(["1", "3"])),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    """Two valid safetensors batches (for similarity) and a run folder (for report)."""
    d = tmp_path_factory.mktemp("cli")
    write_arrays(d / "a.safetensors", {"x": torch.rand(4, 3)})
    write_arrays(d / "b.safetensors", {"x": torch.rand(5, 3)})
    (d / "run").mkdir()
    return d


def _argv(prefix, files):
    if prefix[0] == "similarity":
        extra = ["--samples", str(files / "a.safetensors")] if prefix[1] == "memorization" else []
        return [*prefix, *extra, "--refs", str(files / "b.safetensors")]
    if prefix[0] == "report":
        return [*prefix, str(files / "run")]
    return list(prefix)


def _refused(argv, capsys) -> tuple[int, str]:
    """main(argv) with world loading and training replaced by a failure (so nothing runs): exit code, stderr."""
    import diffmem.worlds.world as ww
    from diffmem.cli.main import main

    def never(*a, **k):
        raise AssertionError("a bad value reached the world loader")

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ww, "_load", never)
        mp.setattr(ww, "train_world", never)
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse: not a number / not a choice
            code = stop.code
    return code, capsys.readouterr().err


@fuzz("cli_values")
@given(data=st.data())
def test_cli_values_are_refused_before_any_work(data, cli_files, capsys):
    prefix, flag, values = data.draw(st.sampled_from(VALUES))
    value = data.draw(values)
    out = [] if prefix[0] in ("similarity", "report", "train") else ["--out", str(cli_files / "out")]
    code, err = _refused([*_argv(prefix, cli_files), *out, f"{flag}={value}"], capsys)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and last.startswith(("diffmem", "usage")) and "error" in last, (prefix, flag, value, err)


OUT_COMMANDS = [WR, AN, DT, AU, ["mitigate", "--world", "digits-t2i"], ["prune"], ["theory", "scores"], ["demo"],
                ["train", "digits-t2i"]]


@fuzz("cli_out")
@given(prefix=st.sampled_from(OUT_COMMANDS), how=st.sampled_from(["file", "under-file", "unwritable"]),
       dry=st.booleans())
def test_cli_out_that_cannot_be_a_folder_is_refused(prefix, how, dry, cli_files, capsys):
    """--out an existing file, a path below a file or below a read-only folder: exit 2 naming it, dry run or not."""
    (cli_files / "afile").write_text("x")
    ro = cli_files / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    if how == "unwritable" and os.access(ro, os.W_OK):
        return  # root ignores permissions; nothing to test here
    target = {"file": cli_files / "afile", "under-file": cli_files / "afile" / "sub", "unwritable": ro / "sub"}[how]
    dry = dry and prefix[0] != "mitigate"  # the one writing command without a dry run
    code, err = _refused([*prefix, "--out", str(target), *(["--dry-run"] if dry else [])], capsys)
    assert code == 2 and str(target.parent if how != "file" else target) in err and len(err.strip().splitlines()) == 1
