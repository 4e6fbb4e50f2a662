"""``mitigate`` on a local two-worker Ray cluster gives the unit records and the table of one process, bit for bit
(gated runs included: a gated unit holds only its flagged prompts, merged with the plain unit on the driver)."""

import csv

import pytest

ray = pytest.importorskip("ray")

from diffmem.cli.main import main  # noqa: E402
from diffmem.io import read_json  # noqa: E402
from diffmem.mitigations.harness import ROW_COLUMNS  # noqa: E402
from diffmem.worlds.world import load_world  # noqa: E402
from test_training import tiny  # noqa: E402

MEASURED = ("seconds_per_image", "peak_mem_mb")  # wall time and memory differ from run to run


@pytest.fixture(scope="module")
def home_world(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(home))
        yield home, load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}),
                               progress=False)


def _args(world, out, *extra):
    return ["mitigate", "--world", str(world.directory), "--out", str(out), "--steps", "4",
            "--methods", "jain-stp,ours-overshoot", "--grid", "jain-stp:300", "--grid", "ours-overshoot:0.55",
            "--gate", "wen-step1",
            "--n-gen", "2", "--threads", "1", "--no-progress", "--json", *extra]


def _records(out):
    """Every unit's records (its settings and judgements), without the measured cost."""
    return {str(p.relative_to(out)): {k: v for k, v in read_json(p).items() if k != "cost"}
            for p in sorted((out / "units").rglob("*.json"))}


def _table(out):
    with open(out / "rows.csv", newline="") as f:
        return [[r[c] for c in ROW_COLUMNS if c not in MEASURED] for r in csv.DictReader(f)]


def test_two_workers_give_the_serial_records_bitwise(home_world, tmp_path, monkeypatch):
    home, world = home_world
    monkeypatch.setenv("DIFFMEM_HOME", str(home))  # the workers read the same classifier cache
    assert main(_args(world, tmp_path / "serial")) == 0
    assert main(_args(world, tmp_path / "ray", "--workers", "2")) == 0
    serial = _records(tmp_path / "serial")
    assert _records(tmp_path / "ray") == serial and len(serial) == 3 + 2 + 2 * 6  # gate, plain, 6 runs × 2 sets
    assert _table(tmp_path / "ray") == _table(tmp_path / "serial")
    assert sum("-gated" in k for k in serial) == 6
