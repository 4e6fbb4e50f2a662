"""The conventions every ``diffmem`` command shares: options, threads, one-line errors, dry runs, file modes."""

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffmem.cli import common
from diffmem.cli.main import COMMANDS, build_parser, main

SHARED = ("--out", "--threads", "--device", "--dtype", "--batch-size", "--seed", "--steps", "--quiet", "--verbose",
          "--json", "--dry-run", "--no-progress")


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def command_options() -> dict[str, dict[str, argparse.Action]]:
    """Every (sub-)command's options by flag, from the parser itself."""
    out = {}
    for name, p in _subparsers(build_parser()).items():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        for label, q in ([(f"{name} {k}", v) for k, v in nested[0].choices.items()] if nested else [(name, p)]):
            out[label] = {s: a for a in q._actions for s in a.option_strings if s.startswith("--")}
    return out


def test_shared_options_mean_the_same_everywhere():
    opts = command_options()
    assert {"demo", "train", "world-report", "analyze", "prune", "detect", "audit", "theory",
            "similarity memorization"} <= set(opts)

    def kind(a):  # what a flag parses to: destination, type, action, choices, metavar
        return (a.dest, getattr(a.type, "__name__", a.type), type(a).__name__, a.choices, a.metavar)

    for flag in SHARED:
        # train's --steps and --seed are the optimizer's, and say so
        kinds = {kind(o[flag]) for c, o in opts.items() if flag in o and not (c == "train" and flag in ("--steps",
                                                                                                       "--seed"))}
        assert len(kinds) == 1, (flag, kinds)
    # the output, progress, verbosity and summary flags are on every command
    for c, o in opts.items():
        if c != "version":
            assert {"--quiet", "--verbose", "--json", "--no-progress"} <= set(o), c
    for c in ("demo", "train", "world-report", "analyze", "prune", "theory"):
        assert {"--threads", "--dry-run", "--out"} <= set(opts[c]), c


def test_help_does_not_import_torch():
    code = ("import sys\nfrom diffmem.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.strip().endswith("False") and "world-report" in out


def test_default_threads_rule(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert common.default_threads() == 3  # the user's OpenMP setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(common.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(common, "physical_cores", lambda: 4)
    for idle, threads in ((8.0, 4), (5.9, 2), (2.0, 1), (0.3, 1), (None, 1)):  # idle logical CPUs -> threads
        monkeypatch.setattr(common, "idle_cpus", lambda idle=idle: idle)
        assert common.default_threads() == threads, idle


def test_idle_cpus_reads_proc_stat(monkeypatch):
    if Path("/proc/stat").exists():
        assert common._cpu_times()[0] > 0 and common.physical_cores() >= 1
    # two samples 200 jiffies apart on 2 CPUs: 150 of 200 idle (idle + iowait) -> 1.5 idle CPUs
    samples = iter([(1000.0, 600.0), (1200.0, 750.0)])
    monkeypatch.setattr(common, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    assert common.idle_cpus(window=0) == pytest.approx(1.5)


def test_threads_are_set_once_before_work(tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        assert main(["theory", "loss-gap", "--threads", "1", "--dry-run", "--out", str(tmp_path / "x")]) == 0
        assert main(["similarity", "classifier", "--threads", "1", "--json"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["theory", "loss-gap", "--out", str(a_file)]) == 2
    _one_error_line(capsys, str(a_file), "existing file")
    assert main(["analyze", "kim", "--out", str(tmp_path / "k"), "--refs", str(tmp_path / "nope")]) == 2
    _one_error_line(capsys, "nope", "does not exist")
    assert main(["analyze", "kim", "--model", str(tmp_path), "--prompts", str(tmp_path / "m.jsonl"),
                 "--out", str(tmp_path / "k")]) == 2
    _one_error_line(capsys, "m.jsonl")
    assert main(["similarity", "duplicates", "--refs", str(tmp_path / "missing.safetensors")]) == 2
    _one_error_line(capsys, "missing.safetensors")
    if not torch.cuda.is_available():
        assert main(["prune", "--model", str(tmp_path), "--device", "cuda", "--out", str(tmp_path / "p")]) == 2
        _one_error_line(capsys, "--device cuda", "--device cpu")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["theory", "loss-gap", "--out", str(locked / "out")]) == 2
        _one_error_line(capsys, "not writable", str(locked))


def test_internal_errors_keep_the_traceback_behind_verbose(tmp_path, monkeypatch, capsys):
    from diffmem.theory import lab

    def broken(*args, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(lab, "run_loss_gap", broken)
    assert main(["theory", "loss-gap", "--out", str(tmp_path / "o")]) == 1
    _one_error_line(capsys, "RuntimeError: boom", "-v")
    with pytest.raises(RuntimeError, match="boom"):
        main(["theory", "loss-gap", "-v", "--out", str(tmp_path / "o")])


def _tree(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("argv", [
    ["demo", "--quick"], ["train", "digits-t2i", "--out", "ckpt"], ["world-report", "digits-t2i", "--quick"],
    ["analyze", "kim", "--quick"], ["prune", "--quick"], ["theory", "sweep", "--quick"], ["theory", "loss-gap"],
    ["train", "images", "--planted", "2", "--duplicates", "3"], ["detect", "--world", "digits-t2i", "--quick"],
    ["audit", "--world", "digits-t2i", "--steps", "4"],
])
def test_dry_run_writes_nothing(argv, tmp_path, monkeypatch, capsys):
    import json

    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    if "images" in argv:  # train PATH: a folder of the user's images
        (tmp_path / "images").mkdir()
        for i in range(12):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "images" / f"{i}.png")
    before = _tree(tmp_path)
    out = ["--out", "out"] if "--out" not in argv and argv[0] not in ("demo", "train") else []
    assert main([*argv, *out, "--dry-run"]) == 0
    settings = json.loads(capsys.readouterr().out)  # the resolved settings, as one JSON object
    assert settings["command"] == argv[0] and "out" in json.dumps(settings)
    assert _tree(tmp_path) == before  # no folder, no lock, no cache entry


def test_one_summary_format_and_json(tmp_path, capsys):
    import json

    skip = ["--skip", "world", "--skip", "kim", "--skip", "theory"]
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "-q", *skip]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "out" and lines[-1].split()[0] == "sections"  # -q: only "key value" lines
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--json", *skip]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["command"] == "demo" and summary["out"] == str(tmp_path / "d")


def test_written_files_are_group_readable_under_umask_022(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        skip = ["--skip", "world", "--skip", "kim", "--skip", "theory"]
        assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "-q", *skip]) == 0
        assert main(["theory", "loss-gap", "--quick", "--no-figures", "--out", str(tmp_path / "t"), "-q"]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o644 for p in files}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in tmp_path.rglob("*") if p.is_dir())


def test_every_command_module_is_registered():
    assert set(common.HELP) == set(COMMANDS)


def test_readme_options_table_is_current():
    """README's table of every command's options is the one the parser generates (after a change of options:
    ``python -m diffmem.cli.options --readme README.md``)."""
    from diffmem.cli.options import END, START, options_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert readme[readme.index(START) + len(START):readme.index(END)] == options_table()
