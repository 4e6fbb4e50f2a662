"""``analyze kim-theory`` killed after its first chunk of prompts (``os._exit``, no cleanup) and run again: it reuses
the saved chunk and ends with the files of an uninterrupted run; a rerun under another setting recomputes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from diffmem.analyses.kim_theory_result import KimTheoryResult
from diffmem.io import read_json
from diffmem.runners.kim_theory import analyze_kim_theory
from test_hardening_kill import KILL as HARD_KILL

# the hard kill of test_hardening_kill (after the K-th unit stamp published), then the job itself
KILL = HARD_KILL.split("from diffmem.cli.main")[0] + """import json
from diffmem.runners.kim_theory import analyze_kim_theory
analyze_kim_theory(sys.argv[2], progress=False, **json.loads(sys.argv[3]))
"""


@pytest.fixture
def world(tmp_path, monkeypatch):
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    return str(load_world(tiny(steps=2), progress=False).directory)


def _killed(out, kwargs: dict) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL), "1", str(out), json.dumps(kwargs)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 137, done.stderr[-3000:]


def _bits(a, b) -> bool:
    """Equal shapes and values, NaN where the other is NaN (one thread each: the same bits)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) and \
        torch.equal(a.isnan(), b.isnan())


def _same(a, b) -> dict:
    return {k: v for k, v in read_json(a / "summary.json").items() if k not in ("wall_seconds", "units")} == \
        {k: v for k, v in read_json(b / "summary.json").items() if k not in ("wall_seconds", "units")}


def test_kim_theory_killed_then_resumed_equals_uninterrupted(world, tmp_path):
    kw = {"world": world, "quick": True, "steps": 4, "n_seeds": 2, "batch_prompts": 2}
    full = analyze_kim_theory(tmp_path / "full", progress=False, **kw)
    n_units = full["units"]["computed"]
    assert n_units >= 2 and full["units"]["reused"] == 0 and not (tmp_path / "full/units").exists()
    cut = tmp_path / "cut"
    _killed(cut, kw)
    assert not (cut / "summary.json").exists() and sorted(p.name for p in (cut / "units").iterdir()) == \
        ["chunk-00000.json", "chunk-00000.safetensors"]
    resumed = analyze_kim_theory(cut, progress=False, **kw)
    assert resumed["units"] == {"computed": n_units - 1, "reused": 1, "recomputed": 0}
    assert _same(tmp_path / "full", cut)
    assert (cut / "prompts.csv").read_bytes() == (tmp_path / "full/prompts.csv").read_bytes()
    a, b = KimTheoryResult.load(tmp_path / "full"), KimTheoryResult.load(cut)
    assert a.arrays.keys() == b.arrays.keys() and all(_bits(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert _bits(a.e_T, b.e_T) and not (cut / "units").exists()


def test_kim_theory_units_under_other_settings_are_recomputed(world, tmp_path):
    kw = {"world": world, "quick": True, "steps": 4, "n_seeds": 2, "batch_prompts": 2}
    out = tmp_path / "run"
    _killed(out, kw)
    again = analyze_kim_theory(out, progress=False, **{**kw, "n_seeds": 3})
    assert again["units"]["reused"] == 0 and again["units"]["recomputed"] == 1 and again["n_seeds"] == 3
    analyze_kim_theory(tmp_path / "fresh", progress=False, **{**kw, "n_seeds": 3})
    assert _same(out, tmp_path / "fresh")
