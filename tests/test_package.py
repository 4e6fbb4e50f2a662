"""Package-level promises: light import, atomic writes, run directories, the CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

from diffmem import Provenance, __version__
from diffmem.cli.main import main
from diffmem.io import atomic_write_text, new_run_dir, read_json, write_arrays, write_json
from diffmem.runners.demo import DemoResult


def test_import_is_light():
    code = ("import sys, diffmem, diffmem.theory.closed_form; "
            "print([m for m in ('diffusers', 'transformers', 'matplotlib', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json(target, {"v": 2})
    with pytest.raises(OSError, match="disk full"):
        write_arrays(tmp_path / "b.safetensors", {"x": torch.zeros(3)})
    # the old file is intact, no half file under a final name, no temporary left behind
    assert read_json(target) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_json_is_strict_and_non_finite_values_are_null_with_a_reason(tmp_path):
    import json

    atomic_write_text(tmp_path / "x.txt", "hé")
    assert (tmp_path / "x.txt").read_text(encoding="utf-8") == "hé"
    write_json(tmp_path / "n.json", {"d": float("nan"), "rows": [{"auc": float("inf")}, {"auc": 0.5}]})

    def refuse(token):  # a strict reader: NaN / Infinity tokens are not JSON
        raise ValueError(token)

    data = json.loads((tmp_path / "n.json").read_text(), parse_constant=refuse)
    assert data == {"d": None, "rows": [{"auc": None}, {"auc": 0.5}],
                    "nonfinite": {"/d": "nan", "/rows/0/auc": "inf"}}


def test_written_files_follow_the_umask_not_the_temporary_files_0600(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        for path in (write_json(tmp_path / "a.json", {"v": 1}), write_arrays(tmp_path / "b.st", {"x": torch.zeros(2)}),
                     atomic_write_text(tmp_path / "c.txt", "c")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        os.umask(0o077)
        assert stat.S_IMODE(write_json(tmp_path / "d.json", {}).stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_run_dirs_are_numbered(tmp_path):
    assert [new_run_dir(tmp_path, "demo").name for _ in range(3)] == ["00000-demo", "00001-demo", "00002-demo"]
    (tmp_path / "00007-other").mkdir()
    assert new_run_dir(tmp_path, "x").name == "00008-x"
    with pytest.raises(ValueError, match="'a b'"):
        new_run_dir(tmp_path, "a b")


def test_cli_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffmem {__version__}"
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"diffmem {__version__}"  # the same line both ways
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_cli_demo_writes_a_complete_run(tmp_path, capsys):
    skip = ["--skip", "world", "--skip", "kim", "--skip", "theory"]
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(run), "--no-progress", *skip]) == 0  # --out: the exact folder
    assert sorted(p.name for p in run.iterdir()) == ["demo.json", "demo.safetensors", "report.html", "report.md"]
    res = DemoResult.load(run, "demo")
    assert isinstance(res.provenance, Provenance) and res.provenance.seeds == list(range(8))
    rows = {r.name: r for r in res.rows}
    # the empirical denoiser reproduces training points exactly; the population denoiser does not copy
    assert rows["empirical_w1"].memorization_ratio == 1.0 and rows["population_w1"].memorization_ratio == 0.0
    assert res.sections == () and res.kim is None
    assert torch.cdist(res.samples["empirical_w7.5"], res.train).min(1).values.max() < 1e-3
    assert "| empirical | 7.5 |" in (run / "report.md").read_text()
    assert json.loads((run / "demo.json").read_text())["type"] == "DemoResult"


def test_demo_world_and_kim_sections_on_a_tiny_world(tmp_path, monkeypatch):
    """The world and Kim sections run end to end and the report renders from the saved sections only."""
    from diffmem.io import strict_json
    from diffmem.reports.demo import render_demo
    from diffmem.runners.demo import WorldSection, run_demo
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    run = run_demo(tmp_path / "out", n_samples=4, steps=5, progress=False, sections=("world", "kim"),
                   world=tiny(steps=2), quick=True)
    res = DemoResult.load(run, "demo")
    assert res.sections == ("world", "kim") and isinstance(res.world, WorldSection)
    assert set(res.world.per_w) == {"0", "1", "4", "7.5"}
    assert (run / "world" / "summary.json").exists() and (run / "kim" / "summary.json").exists()
    kim = json.loads((run / "kim" / "summary.json").read_text())
    assert res.kim.summary.n_prompts == kim["n_prompts"] == 6  # 2 planted (tiny world) + 4 non-planted
    # the section is the Kim run's summary.json, typed (non-finite numbers are null in strict JSON)
    assert json.loads(strict_json(res.kim.to_dict())) == kim
    report = (run / "report.md").read_text()
    assert report == render_demo(res, run)
    assert "planted memorization vs guidance" in report and "Kim et al. 2025" in report
    with pytest.raises(ValueError, match="bogus"):
        run_demo(tmp_path / "out", sections=("bogus",))


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["demo", "--samples", "1", "--out", str(tmp_path)]) == 2
    assert "got 1" in capsys.readouterr().err
