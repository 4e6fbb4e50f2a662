"""Kill and resume of the long commands (world-report, detect, mitigate): a process hard-killed between two finished
units (``os._exit``, no cleanup) leaves nothing that looks complete; the same command run again resumes from the
units it finds and ends with the result of an uninterrupted run; units made under other settings are recomputed.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from diffmem.cli.main import main
from diffmem.io import read_arrays, read_json
from diffmem.worlds.world import load_world
from test_training import tiny

# Hard kill after the K-th unit whose stamp (a JSON under units/) is published: every file goes through io's atomic
# rename, so counting the renames counts finished units.
KILL = """
import os, sys
real, seen = os.replace, [0]
def replace(src, dst):
    real(src, dst)
    if "/units/" in str(dst) and str(dst).endswith(".json"):
        seen[0] += 1
        if seen[0] == int(sys.argv[1]):
            os._exit(137)
os.replace = replace
from diffmem.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(home))
        world = load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}), progress=False)
        from diffmem.similarity.digits_classifier import load_digits_classifier

        load_digits_classifier()  # trained once here, read by the killed process and the resumed one
        yield home, world


@pytest.fixture(autouse=True)
def _home(home, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(home[0]))


def _killed(home, after: int, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1",
           "DIFFMEM_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL), str(after), *argv], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 137, done.stderr[-3000:]
    return done


def _units(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in (out / "units").rglob("*.json"))


def test_world_report_killed_then_resumed_equals_uninterrupted(home, tmp_path):
    world = home[1]
    base = ["world-report", str(world.directory), "--quick", "--samples", "2", "--steps", "3", "--weights", "0,4,7.5",
            "--threads", "1", "--no-progress", "--json"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    cut = tmp_path / "cut"
    assert main([*base, "--out", str(cut), "--weights", "0,4"]) == 0  # an old, finished report in the folder
    _killed(home[0], 2, [*base, "--out", str(cut)])
    # the old report is marked stale, the new one is not there: nothing looks complete
    assert not (cut / "summary.json").exists() and not (cut / "world_report.json").exists()
    assert (cut / "summary.json.stale").exists() and _units(cut) == ["units/w0/00000.json", "units/w4/00000.json"]
    stamp = read_json(cut / "units/w4/00000.json")
    stamp["settings"]["steps"] = 99  # as if made under other settings: recomputed, not reused
    (cut / "units/w4/00000.json").write_text(json.dumps(stamp))
    assert main([*base, "--out", str(cut)]) == 0
    a, b = read_json(tmp_path / "full/summary.json"), read_json(cut / "summary.json")
    assert b["units"] == {"computed": 2, "reused": 1, "recomputed": 1}  # w0 reused (samples and all), w4 again
    timing = ("seconds", "units")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    xa, xb = read_arrays(tmp_path / "full/world_report.safetensors"), read_arrays(cut / "world_report.safetensors")
    assert xa.keys() == xb.keys() and all(torch.equal(xa[k], xb[k]) for k in xa)  # one thread each: same bits
    assert not (cut / "units").exists()  # the report holds every sample; no intermediate files left


def _scores(out) -> list[dict]:
    with open(out / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def _rows(summary: dict, drop=("seconds_per_prompt", "peak_mem_mb", "peak_mem_method")) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in summary["rows"]]


def test_detect_killed_then_resumed_equals_uninterrupted(home, tmp_path, capsys):
    base = ["detect", "--world", str(home[1].directory), "--steps", "3", "--detectors", "wen-step1,wen-all",
            "--n-gen", "1", "--labels", "planted,measured", "--n-label", "1", "--chunk", "4", "--threads", "1",
            "--no-progress", "--json"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out)
    cut = tmp_path / "cut"
    _killed(home[0], 3, [*base, "--out", str(cut)])
    assert not (cut / "summary.json").exists() and not (cut / "scores.csv").exists() and len(_units(cut)) == 3
    assert main([*base, "--out", str(cut)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["reused"] == 3 and resumed["computed"] == full["computed"] - 3
    assert _scores(cut) == _scores(tmp_path / "full")
    assert _rows(read_json(cut / "summary.json")) == _rows(read_json(tmp_path / "full/summary.json"))


def test_mitigate_killed_then_resumed_equals_uninterrupted(home, tmp_path, capsys):
    base = ["mitigate", "--world", str(home[1].directory), "--steps", "3", "--methods", "jain-stp,ours-overshoot",
            "--grid", "jain-stp:300", "--grid", "ours-overshoot:0.55", "--n-gen", "1", "--threads", "1",
            "--no-progress", "--json"]
    assert main([*base, "--out", str(tmp_path / "full")]) == 0
    full = json.loads(capsys.readouterr().out)
    cut = tmp_path / "cut"
    _killed(home[0], 2, [*base, "--out", str(cut)])
    assert not (cut / "summary.json").exists() and not (cut / "rows.csv").exists() and len(_units(cut)) == 2
    assert main([*base, "--out", str(cut)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["reused"] == 2 and resumed["computed"] == full["computed"] - 2
    drop = ("seconds_per_image", "seconds", "peak_mem_mb", "peak_mem_method")
    a, b = read_json(tmp_path / "full/summary.json"), read_json(cut / "summary.json")
    assert _rows(a, drop) == _rows(b, drop) and a["pareto"] == b["pareto"]
