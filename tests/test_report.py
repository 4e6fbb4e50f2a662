"""The HTML report, its per-row CSVs, the paper figures and ``to_frame``, on a tiny run of every job; then the page in
a real headless browser: images decode, tables sort, no console error, the page is not blank.

The browser tests need a Chromium binary and the Python ``playwright`` driver (``dev`` extra). They skip when either
is missing, unless ``DIFFMEM_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes a missing browser a failure.
"""

import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from diffmem.cli.main import main
from diffmem.reports.sections import MITIGATION_COLUMNS
from test_training import tiny


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def build_tiny_run(root: Path) -> Path:
    """A demo run (closed form + theory) with a world report, a Kim study, a mitigation run, a detection run and an
    audit inside it, each on a tiny trained world; then ``report.html`` over all of it."""
    from diffmem.reports.html import write_report
    from diffmem.runners.demo import run_demo
    from diffmem.runners.kim import kim_world_subject, run_kim_job
    from diffmem.worlds.report import world_report
    from diffmem.worlds.world import load_world

    run = run_demo(root / "runs", n_samples=2, steps=2, sections=("theory",), progress=False)
    world = load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}), progress=False)
    world_report(world, run / "world", quick=True, samples=2, steps=4, weights=(0.0, 4.0), progress=False)
    run_kim_job(kim_world_subject(world, steps=4, per_kind=2), run / "kim", quick=True, progress=False)
    assert main(["detect", "--world", str(world.directory), "--out", str(run / "detect"), "--quick", "--steps", "4",
                 "--detectors", "wen-step1", "--n-gen", "1", "--threads", "1", "--no-progress"]) == 0
    assert main(["mitigate", "--world", str(world.directory), "--out", str(run / "mitigate"), "--steps", "4",
                 "--methods", "jain-stp,ours-overshoot", "--gate", "wen-step1", "--n-gen", "2", "--quick",
                 "--threads", "1", "--no-progress"]) == 0
    refs = root / "refs.npz"
    np.savez(refs, images=(world.train_images().numpy() + 1) / 2)
    assert main(["audit", "--world", str(world.directory), "--out", str(run / "audit"), "--steps", "4",
                 "--fraction", "0.25", "--threshold", "0.0", "--refs", str(refs), "--no-progress"]) == 0
    write_report(run)
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(tmp_path_factory.mktemp("home")))
        yield build_tiny_run(tmp_path_factory.mktemp("report"))


def test_report_has_one_section_per_saved_result_and_needs_no_network(tiny_run):
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == ["demo", "world-world", "kim-kim", "theory-theory-loss_gap", "theory-theory-scores",
                   "mitigate-mitigate", "detect-detect", "audit-audit"]  # the root's result, then the sections' order
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from the network
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    for href in re.findall(r'<a href="([^"#][^"]*)"', page):  # links to the files beside it resolve
        assert (tiny_run / href).exists(), href
    assert "Provenance" in page and "package" in page and "F4_decomposition.png" in page
    # the Kim job and the detect command wrote their own page at their end too
    assert all((tiny_run / d / "report.html").exists() for d in ("kim", "detect"))


def test_demo_markdown_links_its_figures_and_names_the_html(tiny_run):
    md = (tiny_run / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "theory/loss_gap/loss_gap.png" in links and all((tiny_run / p).exists() for p in links)
    assert "report.html" in md


def test_per_prompt_csvs_carry_the_prompt_text(tiny_run):
    from diffmem.analyses.kim import KimResult
    from diffmem.worlds.data import read_manifest

    kim = _csv(tiny_run / "kim" / "prompts.csv")
    res = KimResult.load(tiny_run / "kim")
    assert [r["prompt_id"] for r in kim] == [p.id for p in res.prompts]
    assert all(r["prompt"] and r["prompt"] == p.text for r, p in zip(kim, res.prompts, strict=True))
    assert {r["verdict"] for r in kim} <= {"memorized", "not memorized", "partial"}
    assert [float(r["D1"]) for r in kim] == [p.D1 for p in res.prompts]  # floats written exactly
    world = _csv(tiny_run / "world" / "prompts.csv")
    assert [r["prompt"] for r in world] == [m["prompt"] for m in read_manifest(tiny_run / "world" / "manifest.jsonl")]
    detect = _csv(tiny_run / "detect" / "prompts.csv")
    scores = _csv(tiny_run / "detect" / "scores.csv")
    assert len(detect) == len({r["prompt_id"] for r in scores}) and all(r["prompt"] for r in detect)
    assert {r["prompt_id"]: float(r["wen-step1 n=1"]) for r in detect} == {
        r["prompt_id"]: float(r["score"]) for r in scores}


def test_pandas_reads_each_per_prompt_csv_with_one_row_per_prompt(tiny_run):
    pd = pytest.importorskip("pandas")
    for folder in ("kim", "world", "detect"):
        frame = pd.read_csv(tiny_run / folder / "prompts.csv")
        assert frame["prompt"].notna().all() and len(frame) == len(_csv(tiny_run / folder / "prompts.csv"))
    audit = pd.read_csv(tiny_run / "audit" / "audit.csv")
    assert audit["prompt"].notna().all() and audit["prompt_id"].is_unique and len(audit) == len(
        _csv(tiny_run / "audit" / "audit.csv"))
    assert (tiny_run / "mitigate" / "report.html").exists() and (tiny_run / "audit" / "report.html").exists()


def test_to_frame_has_one_row_per_prompt(tiny_run):
    pytest.importorskip("pandas")
    from diffmem.analyses.kim import KimResult

    res = KimResult.load(tiny_run / "kim")
    frame = res.to_frame()
    assert list(frame["id"]) == [p.id for p in res.prompts] and list(frame["text"]) == [p.text for p in res.prompts]
    assert list(frame["severity.copy_rate"]) == [float(p.severity["copy_rate"]) for p in res.prompts]


def test_to_frame_without_pandas_says_how_to_get_it(tiny_run, monkeypatch):
    from diffmem.analyses.kim import KimResult

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        KimResult.load(tiny_run / "kim").to_frame()


def test_kim_figures_label_every_axis_and_encoding(tiny_run):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from diffmem.analyses.kim import KimResult
    from diffmem.reports.kim_figures import FIGURES

    res = KimResult.load(tiny_run / "kim")
    for name, plot in FIGURES.items():
        fig = plot(res)
        plots = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in plots), name
        assert not any(re.match(r"F\d", ax.get_title()) for ax in fig.axes), name
        if name in ("F4_decomposition", "F5_D_vs_severity"):  # colour encodes severity / copy rate
            bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
            assert len(bars) == 1 and bars[0].get_ylabel(), name
        plt.close(fig)


def test_report_cli_exports_paper_figures_and_rejects_an_empty_folder(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "page.html"
    assert main(["report", str(tiny_run), "--html", str(out), "--format", "svg", "--dpi", "150"]) == 0
    svgs = sorted(p.name for p in (tiny_run / "kim" / "figures").glob("*.svg"))
    assert svgs[:2] == ["F1_loss.svg", "F2_cosines.svg"] and len(svgs) == 6
    assert (tiny_run / "kim" / "figures" / "F1_loss.svg").read_text().lstrip().startswith("<?xml")
    page = out.read_text(encoding="utf-8")
    assert "Figures for a paper" in page
    for href in re.findall(r'<a href="([^"#][^"]*)"', page):  # links are relative to the page's own folder
        assert (out.parent / href).exists(), href
    capsys.readouterr()
    (tmp_path / "nothing-here").mkdir()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "holds no saved result" in capsys.readouterr().err


# ---- in a real browser -------------------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    path = os.environ.get("DIFFMEM_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    reason = None
    if path is None:
        reason = f"no Chromium binary on PATH ({', '.join(BROWSERS)}) and DIFFMEM_BROWSER unset"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the Python playwright driver is not installed (pip install -e '.[dev]')"
    if reason and os.environ.get("DIFFMEM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"DIFFMEM_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def page(tiny_run):
    binary = _browser()  # skips (or fails under DIFFMEM_REQUIRE_BROWSER=1) before the driver is imported
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto((tiny_run / "report.html").as_uri())
        tab.wait_for_load_state("load")
        tab.errors = errors
        yield tab
        browser.close()


def test_every_image_decodes_and_nothing_errs(page):
    sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
    assert len(sizes) > 20 and all(ok and w > 0 and h > 0 for ok, w, h in sizes)
    assert page.errors == []


def _column(page, table, i):
    return table.evaluate(f"t => Array.from(t.tBodies[0].rows).map(r => r.cells[{i}].getAttribute('data-v'))")


def test_a_header_click_sorts_numbers_as_numbers_and_a_second_click_reverses(page):
    table = page.locator("#demo table.sortable")
    heads = table.locator("thead th")
    i = [heads.nth(k).inner_text().strip(" ↕▲▼") for k in range(heads.count())].index("mean NN distance")
    before = [float(v) for v in _column(page, table, i)]
    assert sorted(before) != sorted(before, reverse=True)  # the two clicks give different orders
    heads.nth(i).click()
    assert [float(v) for v in _column(page, table, i)] == sorted(before)
    heads.nth(i).click()
    assert [float(v) for v in _column(page, table, i)] == sorted(before, reverse=True)
    heads.nth(0).click()  # text column: alphabetical
    names = _column(page, table, 0)
    assert names == sorted(names)


def test_the_page_is_not_blank(page):
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"), dtype=float)
    assert shot.shape[0] > 2000 and shot.std() > 20  # text, tables and figures, not one flat colour
    for sid in page.eval_on_selector_all("section", "els => els.map(e => e.id)"):
        part = np.asarray(Image.open(io.BytesIO(page.locator(f"#{sid}").screenshot())).convert("L"), dtype=float)
        assert part.std() > 10, sid


def _section_text(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_mitigation_section_renders_every_saved_row_and_column_and_the_pareto_figure(tiny_run):
    page = (tiny_run / "report.html").read_text(encoding="utf-8")
    part = _section_text(page, "mitigate-mitigate")
    saved = json.loads((tiny_run / "mitigate" / "summary.json").read_text())
    rows = saved["rows"]
    assert {(r["method"], r["gated"]) for r in rows} == {(m, g) for m in ("jain-stp", "ours-overshoot")
                                                        for g in (False, True)}
    body = part.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr>") == len(rows) and "ours-overshoot (ours)" in body
    for key in rows[0]:  # every saved column is shown: under a readable header or its own name
        assert key in MITIGATION_COLUMNS or key == "ours" or f">{key}<" in part, key
    assert "Gated vs ungated" in part and "Pareto" in part and 'href="mitigate/rows.csv"' in part
    assert re.search(r"n = \d+ × 2 trigger", part) and "95 % bootstrap CI" in part
    assert len(re.findall(r'<img src="data:image/png', part)) == 1  # the Pareto figure


def test_mitigation_table_shows_an_unknown_saved_column(tiny_run, tmp_path):
    from diffmem.reports.html import render_report

    run = tmp_path / "m"
    shutil.copytree(tiny_run / "mitigate", run)
    saved = json.loads((run / "summary.json").read_text())
    for i, r in enumerate(saved["rows"]):
        r["held_out_flag"] = i % 2 == 0  # a column a later harness may add
    (run / "summary.json").write_text(json.dumps(saved))
    page = render_report(run)
    assert ">held_out_flag<" in page and page.count(">yes<") >= 1


def test_detection_section_draws_roc_curves_from_the_saved_scores(tiny_run):
    from diffmem.evaluation.detection import roc_auc
    from diffmem.reports.detection_figures import roc_curves

    part = _section_text((tiny_run / "report.html").read_text(encoding="utf-8"), "detect-detect")
    assert part.count('alt="roc_') == 2 and "positives" in part and "95 % stratified bootstrap CI" in part
    curves = roc_curves(tiny_run / "detect", "planted")
    saved = json.loads((tiny_run / "detect" / "summary.json").read_text())
    [row] = [r for r in saved["rows"] if r["label"] == "planted"]
    [c] = curves["curves"]
    assert c["auc"] == row["auc"] and (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0, 0, 1, 1)
    assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(row["auc"], abs=1e-12)  # the curve under the AUC
    scores = [r for r in _csv(tiny_run / "detect" / "scores.csv") if r["split"] == "evaluation"
              and r["label_planted"] in ("0", "1")]
    assert roc_auc([float(r["score"]) for r in scores], [int(r["label_planted"]) for r in scores]) == row["auc"]


def test_audit_section_ranks_with_verdicts_and_samples(tiny_run):
    part = _section_text((tiny_run / "report.html").read_text(encoding="utf-8"), "audit-audit")
    rows = _csv(tiny_run / "audit" / "audit.csv")
    body = part.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr>") == len(rows)
    escalated = [r for r in rows if r["escalated"] == "True"]
    assert body.count('class="verdict-copy"') == sum(r["verdict"] == "memorized" for r in rows)
    assert body.count('<img class="thumb"') == len(escalated) > 0


def test_world_table_marks_the_saved_copy_verdicts(tiny_run):
    from diffmem.worlds.report import WorldReport

    part = _section_text((tiny_run / "report.html").read_text(encoding="utf-8"), "world-world")
    arrays = WorldReport.load(tiny_run / "world", "world_report").samples
    s = json.loads((tiny_run / "world" / "summary.json").read_text())
    manifest = [json.loads(line) for line in (tiny_run / "world" / "manifest.jsonl").read_text().splitlines()]
    want = 0
    for w in s["weights"]:
        own = arrays[f"copy_paired_w{w:g}"].numpy()
        other = arrays[f"copy_any_w{w:g}"].numpy()
        paired = np.array([m["kind"] == "planted" for m in manifest])[:, None]
        want += int(np.where(paired, own, other).sum())
    assert part.count(", copy\"") == want  # one red frame (and tooltip) per saved copy verdict
    paired_kinds = [m["kind"] in ("planted", "template") for m in manifest]
    assert arrays["has_paired"].tolist() == paired_kinds  # every paired image is saved, and shown beside its samples
    assert part.count('title="paired training image') == sum(paired_kinds) > 0
    world = _csv(tiny_run / "world" / "prompts.csv")
    w = f"{s['weights'][-1]:g}"
    assert [float(r[f"copy_rate_w{w}"]) for r in world] == pytest.approx(
        np.where(paired, own, other).mean(1).tolist())


def test_the_mitigation_and_audit_tables_sort_in_the_browser(page):
    for sid, header in (("mitigate-mitigate", "copy rate after"), ("audit-audit", "screen score")):
        table = page.locator(f"#{sid} table.sortable").first
        heads = table.locator("thead th")
        i = [heads.nth(k).inner_text().replace("\n", " ").strip(" ↕▲▼") for k in range(heads.count())].index(header)
        values = [float(v) for v in _column(page, table, i)]
        heads.nth(i).click()
        assert [float(v) for v in _column(page, table, i)] == sorted(values), sid
        heads.nth(i).click()
        assert [float(v) for v in _column(page, table, i)] == sorted(values, reverse=True), sid
