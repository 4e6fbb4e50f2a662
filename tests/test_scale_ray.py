"""``detect`` on a local two-worker Ray cluster gives the records of one process, bit for bit — also when a worker is
killed mid-run, and when the driver is killed and the job resumed from the units on disk; so do ``world-report``
(units with samples) and a ``prune`` table."""

import json
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from diffmem.cli.detect import build_subject  # noqa: E402
from diffmem.cli.main import main  # noqa: E402
from diffmem.detectors.harness import run_detection  # noqa: E402
from diffmem.executor import RayExecutor  # noqa: E402
from diffmem.io import read_arrays  # noqa: E402
from diffmem.worlds.world import load_world  # noqa: E402
from test_training import tiny  # noqa: E402

DETECTORS = "wen-step1,chen-stability-band"  # one plain, one fitted on the calibration split first
STEPS = 4


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(tmp_path_factory.mktemp("home")))
        yield load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}), progress=False)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster of two CPUs for the module (the executors join it and leave it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _args(world, out, *extra):
    return ["detect", "--world", str(world.directory), "--out", str(out), "--quick", "--steps", str(STEPS),
            "--detectors", DETECTORS, "--n-gen", "1,2", "--chunk", "3", "--threads", "1", "--no-progress", "--json",
            *extra]


@pytest.fixture(scope="module")
def serial(world, tmp_path_factory):
    """The one-process run: its scores.csv bytes and its summary."""
    out = tmp_path_factory.mktemp("serial")
    assert main(_args(world, out)) == 0
    return (out / "scores.csv").read_bytes(), json.loads((out / "summary.json").read_text())


def _unit_count(summary) -> int:
    return sum(summary["units"].values())


def test_two_workers_give_the_serial_records_bitwise(world, serial, cluster, tmp_path, capsys):
    assert main(_args(world, tmp_path, "--workers", "2")) == 0
    assert (tmp_path / "scores.csv").read_bytes() == serial[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["units"]["computed"] == _unit_count(serial[1]) > 4
    assert summary["provenance"]["calibration_fits"] == serial[1]["provenance"]["calibration_fits"]
    assert [r["auc"] for r in summary["rows"]] == [r["auc"] for r in serial[1]["rows"]]


class KillOneWorker(RayExecutor):
    """Kills worker 0 (Ray restarts it) as soon as the first unit arrives, while it still holds queued units."""

    def imap(self, tasks, state=None):
        for n, item in enumerate(super().imap(tasks, state)):
            if n == 0 and len(tasks) > 4 and self.pids is None:  # in the scoring phase, all queued
                self.pids = _pids(self.actors)
                ray.kill(self.actors[0], no_restart=False)
            yield item

    pids = None


def _pids(actors, timeout_s=60.0):
    """The workers' process ids, waiting for a restarting one to come back."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get([a.pid.remote() for a in actors])
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _recipe(world):
    from functools import partial

    return partial(build_subject, str(world.directory), None, None, STEPS, True)


def _run(world, out, executor):
    run_detection(_recipe(world)(), DETECTORS.split(","), n_gen=(1, 2), out=out, n_label=2, chunk_size=3,
                  n_boot=200, executor=executor)
    return json.loads((out / "summary.json").read_text())


def test_a_killed_worker_loses_no_unit(world, serial, cluster, tmp_path):
    with KillOneWorker(_recipe(world), workers=2) as executor:
        summary = _run(world, tmp_path, executor)
        assert executor.pids is not None
        after = _pids(executor.actors)
    assert after[0] != executor.pids[0] and after[1] == executor.pids[1]  # worker 0 was restarted, 1 untouched
    assert summary["units"] == {"computed": _unit_count(serial[1]), "reused": 0, "recomputed": 0}
    assert (tmp_path / "scores.csv").read_bytes() == serial[0]


class KillDriverAfter(RayExecutor):
    """The driver dies after ``after`` units arrived (and were written)."""

    after = 3

    def imap(self, tasks, state=None):
        for n, item in enumerate(super().imap(tasks, state)):
            if n == self.after:
                raise Killed
            yield item


def test_a_killed_driver_resumes_from_the_units_on_disk(world, serial, cluster, tmp_path):
    with KillDriverAfter(_recipe(world), workers=2) as executor:
        with pytest.raises(Killed):
            _run(world, tmp_path, executor)
        written = sorted(p for p in (tmp_path / "units").rglob("*.json"))
        assert len(written) == 1 + KillDriverAfter.after  # the fit, then the units that arrived before the kill
        executor.after = None  # the resumed driver (on the same workers, to keep the test short) runs to the end
        summary = _run(world, tmp_path, executor)
    total = _unit_count(serial[1])
    assert summary["units"] == {"computed": total - len(written), "reused": len(written), "recomputed": 0}
    assert (tmp_path / "scores.csv").read_bytes() == serial[0]


def _units(root):
    """Every unit file under ``root`` without its measured cost and times (they differ between runs)."""
    timing = {"cost", "train_s", "sample_s", "cpu_s"}
    return {str(p.relative_to(root)): {k: v for k, v in json.loads(p.read_text()).items() if k not in timing}
            for p in sorted(root.rglob("units/**/*.json")) + sorted(root.rglob("rows/*.json"))}


def test_theory_sweep_on_two_workers_equals_one_process(cluster, tmp_path):
    from diffmem.theory.sweeps import run_sweep
    from test_theory_nets import TINY

    serial = run_sweep(TINY, tmp_path / "serial")
    with RayExecutor(None, workers=2) as executor:
        on_ray = run_sweep(TINY, tmp_path / "ray", executor=executor)
    assert _units(tmp_path / "serial") == _units(tmp_path / "ray") and len(_units(tmp_path / "ray")) > 5
    assert serial["findings"] == on_ray["findings"]


def test_kim_analyses_on_two_workers_equal_one_process(world, cluster):
    from functools import partial

    import torch

    from diffmem.analyses.kim import KimConfig, run_kim
    from diffmem.runners.kim import _subject_only, kim_subject

    recipe = partial(kim_subject, str(world.directory), None, "sd", None, STEPS, 2, True, None, "cpu", "float32")
    cfg = KimConfig(n_seeds=2, draws=2, n_boot=10, sweep=(7.5,), primary="l2_sim")
    subject = recipe()[0]
    serial = run_kim(subject, cfg).to_dict()
    with RayExecutor(partial(_subject_only, recipe), workers=2) as executor:
        on_ray = run_kim(subject, cfg, executor=executor).to_dict()
    same = json.dumps(serial[0], sort_keys=True, default=str) == json.dumps(on_ray[0], sort_keys=True, default=str)
    assert same and serial[1].keys() == on_ray[1].keys()  # (as JSON: NaN, an undefined correlation, != NaN)
    assert all(torch.equal(serial[1][k], on_ray[1][k]) for k in serial[1])


REPORT = ["--quick", "--samples", "2", "--steps", "3", "--weights", "0,7.5", "--chunk", "5", "--threads", "1",
          "--no-progress", "--json"]


@pytest.fixture(scope="module")
def report(world, tmp_path_factory):
    """The one-process world report: its arrays and summary."""
    from diffmem.similarity.digits_classifier import load_digits_classifier

    load_digits_classifier()  # trained once, in the module's home
    out = tmp_path_factory.mktemp("report")
    assert main(["world-report", str(world.directory), "--out", str(out), *REPORT]) == 0
    return read_arrays(out / "world_report.safetensors"), json.loads((out / "summary.json").read_text())


def _same_report(out, report):
    arrays, summary = read_arrays(out / "world_report.safetensors"), json.loads((out / "summary.json").read_text())
    assert arrays.keys() == report[0].keys() and all(torch.equal(arrays[k], report[0][k]) for k in arrays)
    drop = ("seconds", "units")
    assert {k: v for k, v in summary.items() if k not in drop} == {k: v for k, v in report[1].items() if k not in drop}
    return summary


def test_world_report_on_two_workers_equals_one_process(world, report, cluster, tmp_path):
    assert main(["world-report", str(world.directory), "--out", str(tmp_path), *REPORT, "--workers", "2"]) == 0
    summary = _same_report(tmp_path, report)
    assert summary["units"] == report[1]["units"] and report[1]["units"]["computed"] >= 4  # 2 weights x 2+ chunks
    assert not (tmp_path / "units").exists()


def test_world_report_resumes_from_units_with_samples_made_on_ray(world, report, cluster, tmp_path):
    from diffmem.worlds.report import report_rows, resumable_samples, world_recipe

    rows = report_rows(world.data.prompts, True)
    with KillDriverAfter(world_recipe(world), workers=2) as executor, pytest.raises(Killed):
        resumable_samples(world, rows, 2, 3, (0.0, 7.5), 0, 1000, tmp_path / "units", executor=executor,
                          chunk_size=5)
    made = sorted((tmp_path / "units").rglob("*.safetensors"))
    assert len(made) == KillDriverAfter.after == len(list((tmp_path / "units").rglob("*.json")))
    assert main(["world-report", str(world.directory), "--out", str(tmp_path), *REPORT]) == 0  # resumed here
    total = report[1]["units"]["computed"]
    assert _same_report(tmp_path, report)["units"] == {"computed": total - 3, "reused": 3, "recomputed": 0}


def table_state(directory):
    """A Ray worker's prune table inputs: the tiny world's, pixels as features (no classifier to train)."""
    from diffmem.mitigations.prune_backends import pixel_features, world_inputs

    inputs = world_inputs(load_world(directory, progress=False, train=False), features=pixel_features)
    return inputs.subject, inputs.evaluation, inputs.recipe


def test_prune_table_on_two_workers_equals_one_process(world, cluster, tmp_path):
    from functools import partial

    from diffmem.mitigations.prune_table import TableSettings, run_table

    settings = TableSettings(ratio=0.25, runs=2, num_batches=1, finetune_steps=2, n_samples=6, sample_steps=2)
    subject, evaluation, recipe = table_state(str(world.directory))
    serial = run_table(subject, evaluation, recipe, tmp_path / "serial", settings=settings)
    with RayExecutor(partial(table_state, str(world.directory)), workers=2) as executor:
        on_ray = run_table(subject, evaluation, recipe, tmp_path / "ray", settings=settings, executor=executor)
    assert on_ray.to_dict() == serial.to_dict()
    rows = {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / "serial" / "runs").iterdir())}
    assert len(rows) == 6 and rows == {p.name: json.loads(p.read_text())
                                       for p in sorted((tmp_path / "ray" / "runs").iterdir())}
    a, b = (read_arrays(tmp_path / d / "pruned" / "weights.safetensors") for d in ("serial", "ray"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # written by a worker into out/
    assert not (tmp_path / "ray" / "state").exists()


def test_without_the_flags_ray_is_never_imported(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from diffmem.executor import Unit, make_executor, run_units\n"
            "ex = make_executor(None)\n"
            f"got = run_units([Unit(__import__('pathlib').Path({str(tmp_path)!r}) / f'{{i}}.json', {{'i': i}}, "
            "lambda state, i=i: {'v': i}) for i in range(3)], {'computed': 0, 'reused': 0, 'recomputed': 0}, "
            "executor=ex)\n"
            "assert [g['v'] for g in got] == [0, 1, 2]\n"
            "import diffmem.cli.main, diffmem.cli.detect, diffmem.detectors.harness, diffmem.cli.world_report\n"
            "import diffmem.cli.prune, diffmem.worlds.report, diffmem.mitigations.prune_table\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
