"""The built-in sections of the HTML report: one function per saved result type, reading saved files only.

Adding a result type (e.g. a mitigation run) is one decorated function here: ``@section(name, title, matches)``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from diffmem.analyses.kim import KimResult
from diffmem.io import read_arrays, read_json
from diffmem.mitigations.prune_results import METRICS, PruneTable
from diffmem.reports.parts import Page, Raw, data_uri, figure, provenance_block, section, table, thumb
from diffmem.reports.tables import kim_prompt_rows

__all__: list[str] = []

WORLD_KINDS = ("planted", "template", "nonplanted", "novel", "class", "null")  # row order of the world grids


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.exists():
        return {}
    try:
        d = read_json(path)
    except (ValueError, OSError):
        return {}
    return d if isinstance(d, dict) else {}


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _scroll(inner: str) -> str:
    return f'<div class="scroll">{inner}</div>'


def _figures(folder: Path, captions: dict[str, str], names=None) -> str:
    """The saved figures of ``folder`` (``names`` in that order, else every PNG/SVG), each with its caption."""
    paths = [folder / n for n in names] if names else sorted(p for p in folder.glob("*.png"))
    return '<div class="figs">' + "".join(figure(p, captions.get(p.stem, "")) for p in paths if p.exists()) + "</div>"


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval of a rate k/n (a report-side interval of a saved count; no sampling)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


# ---- demo ---------------------------------------------------------------------------------------------------------

@section("demo", "Demo: closed-form check", lambda d: (d / "demo.json").exists())
def _demo(folder: Path, page: Page) -> str:
    data = read_json(folder / "demo.json")["data"]
    p = data["provenance"]
    m = p["model"]
    rows = [{"model": r["model"], "w": r["w"], "memorization ratio": r["memorization_ratio"],
             "mean NN distance": r["nn_dist_mean"], "overshoot": r["early_overshoot_mean"],
             "d_first": r["d_first_mean"]} for r in data["rows"]]
    n = len(p.get("seeds") or [])
    text = (f"{m.get('classes')}-class Gaussian mixture in {m.get('dim')} dimensions, {m.get('train_size')} training "
            f"points, {n} seeds per row. empirical: the exact minimizer of the denoising loss on the training set "
            "(memorizes); population: the exact denoiser of the mixture (generalizes). Memorization ratio: samples "
            "whose nearest training point is 3x closer than the second nearest. Overshoot: x0_hat at the first step "
            "projected on the nearest training point (1 = the training point itself). d_first: mean ||eps_c - eps_u|| "
            "at the first step. The other sections of this run follow.")
    md = folder / "report.md"
    extra = f"<p>Terminal summary: {page.link(md)}</p>" if md.exists() else ""
    return (_p(text) + table(rows, caption=f"Closed-form check (n = {n} samples per row)") + extra
            + provenance_block(p))


# ---- world report -------------------------------------------------------------------------------------------------

def _world_rows(folder: Path) -> list[dict]:
    # read as saved, not re-validated: a report must open runs of worlds with kinds this version does not know
    path = folder / "manifest.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _world_tables(folder: Path) -> dict[str, list[dict]]:
    rows = _world_rows(folder)
    return {"prompts.csv": [{"prompt_index": i, "prompt": r["prompt"], "kind": r["kind"], "label": r.get("label"),
                             "paired_id": (r.get("paired_ids") or [None])[0]} for i, r in enumerate(rows)]}


def _grid_pick(rows: list[dict], per_kind: int = 8) -> list[int]:
    """The prompts shown in the saved grids, in grid-row order (up to ``per_kind`` of each kind)."""
    return [i for k in WORLD_KINDS for i in [j for j, r in enumerate(rows) if r["kind"] == k][:per_kind]]


def _paired_tiles(folder: Path, w: str, rows: list[dict], hw: tuple[int, int], scale: int = 4, pad: int = 2):
    """prompt index -> the paired training image, cut from column 0 of the saved grid (the run saves no other copy)."""
    from PIL import Image

    path = folder / f"grid_w{w}.png"
    if not path.exists():
        return {}
    im = Image.open(path).convert("L")
    h, wd = hw[0] * scale, hw[1] * scale
    out = {}
    for r, i in enumerate(_grid_pick(rows)):
        if rows[i]["kind"] in ("planted", "template"):
            y0 = pad + r * (h + pad)
            tile = im.crop((pad, y0, pad + wd, y0 + h)).resize((48, 48 * h // wd), Image.NEAREST)
            buf = io.BytesIO()
            tile.save(buf, format="PNG")
            out[i] = (f'<img class="thumb" src="{data_uri(buf.getvalue(), "image/png")}" '
                      f'title="paired training image {rows[i]["paired_ids"][0]}">')
    return out


@section("world", "World report: copying and alignment vs guidance", lambda d: (d / "world_report.json").exists(),
         tables=_world_tables)
def _world(folder: Path, page: Page) -> str:

    s = _summary(folder)
    tree = read_json(folder / "world_report.json")["data"]
    n, kinds = s["samples_per_prompt"], s["prompts"]
    rates = []
    for w, v in s["per_w"].items():
        n_pl = kinds.get("planted", 0) * n
        lo, hi = wilson(round((v.get("planted_copy_rate") or 0) * n_pl), n_pl)
        rates.append({"w": float(w), "samples": v.get("samples"), "planted copy rate": v.get("planted_copy_rate"),
                      "95 % CI (Wilson)": [lo, hi] if n_pl else None,
                      "non-planted copy rate": v.get("nonplanted_copy_rate"),
                      "novel copy rate": v.get("novel_copy_rate"),
                      "template copy rate": v.get("template_copy_rate"),
                      "memorization ratio": v.get("memorization_ratio"), "alignment": v.get("alignment")})
    prompts = ", ".join(f"{c} {k}" for k, c in kinds.items())
    intro = (f"World {s['world']}: {n} samples per prompt (seeds {s['seeds'][0]}–{s['seeds'][-1]}), {prompts} "
             f"prompts, {s['steps']} steps of {s['solver']} ({s['spacing']} spacing); model trained "
             f"{(s.get('train') or {}).get('steps')} steps. Copy rule: {s['copy_rule']}. Alignment: the digits "
             f"classifier names the prompt's digit ({_classifier(s.get('classifier'))}).")
    out = [_p(intro), table(rates, caption=f"Rates per guidance weight w (planted CI over n = "
                                            f"{kinds.get('planted', 0) * n} planted samples)")]
    out.append(_world_prompts(folder, s, _saved_samples(folder, "world_report")))
    figs = _figures(folder, {f"grid_w{w}": f"Sample grid at w = {w}: one row per prompt in the table's order (up to 8 "
                             "of each kind), first column the paired training image (grey when none), then seeds "
                             f"{s['seeds'][0]}–{s['seeds'][-1]}." for w in s["per_w"]})
    out.append(f'<details class="grids"><summary>The saved grid files (unlabelled; the table above labels the same '
               f"samples)</summary>{figs}</details>")
    return "".join(out) + provenance_block(tree.get("provenance"), copy_rule=s["copy_rule"])


def _classifier(info) -> str:
    if isinstance(info, dict) and "test_accuracy" in info:
        return f"its test accuracy {info['test_accuracy']:.3f}"
    return str(info)


def _saved_samples(folder: Path, name: str) -> dict:
    """The arrays of a saved world report by their key in its tree ("w7.5" -> [P, N, C, H, W], labels …)."""
    tree = read_json(folder / f"{name}.json")["data"]
    arrays = read_arrays(folder / f"{name}.safetensors")
    return {k: arrays[v["__array__"]] for k, v in tree["samples"].items()}


COPY, REGION = "#d32f2f", "#ff9800"  # borders: a copy; a copy of the template region only


def _strip(x, i: int, w: str, seeds, marks=None) -> Raw:
    """The samples of prompt ``i`` at weight ``w``, left to right by seed; a red frame marks a saved copy verdict."""
    tiles = []
    for j in range(x.shape[1]):
        mark = None if marks is None else int(marks[i, j])
        border = {1: COPY, 2: REGION}.get(mark)
        verdict = {1: ", copy", 2: ", template-region copy"}.get(mark, "")
        tiles.append(thumb(x[i, j], size=max(32, 2 * x.shape[-1]), border=border,
                           title=f"w = {w}, seed {seeds[j]}{verdict}"))
    return Raw("".join(tiles), "")


def _world_prompts(folder: Path, s: dict, arrays: dict, marks: dict | None = None, extra=()) -> str:
    """The labelled sample grid: one row per prompt (text, kind, digit, paired image, the samples at every w)."""
    rows = _world_rows(folder)
    if not rows or not arrays:
        return ""
    weights = [f"{w:g}" for w in s["weights"]]
    any_x = arrays[f"w{weights[0]}"]
    paired = {} if marks else _paired_tiles(folder, weights[0], rows, tuple(any_x.shape[-2:]))
    seeds = s["seeds"]
    table_rows = []
    for i, r in enumerate(rows):
        row = {"#": i, "prompt": Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"]),
               "kind": r["kind"], **{k: r.get(k) for k in extra}, "digit": r.get("label")}
        if not marks:
            row["paired"] = Raw(paired.get(i, "–"), str((r.get("paired_ids") or [""])[0]))
        for w in weights:
            row[f"w = {w}"] = _strip(arrays[f"w{w}"], i, w, seeds, (marks or {}).get(w))
        table_rows.append(row)
    if marks:
        caption = (f"Per-prompt samples (seeds {seeds[0]}–{seeds[-1]} left to right at each w); red frame: the saved "
                   "verdict says copy (ladder: of the paired image; others: of any training image), orange: the "
                   "template region only.")
    else:
        caption = (f"Per-prompt samples (seeds {seeds[0]}–{seeds[-1]} left to right at each w). Per-sample copy "
                   "verdicts are not saved by this world report, so no frame marks copies here; the rates above are "
                   "the verdicts.")
    return "<h3>Per-prompt samples</h3>" + _scroll(table(table_rows, caption=caption))


# ---- graded world report (duplication ladder) ---------------------------------------------------------------------

def _bench_marks(folder: Path, s: dict, arrays: dict) -> dict:
    """w -> [P, N] ints from the saved labels: 1 a copy (of the paired image for ladder prompts), 2 region only."""
    ladder = np.array([r["kind"] == "ladder" for r in _world_rows(folder)])[:, None]
    out = {}
    for w in (f"{w:g}" for w in s["weights"]):
        own = np.where(ladder, arrays[f"copy_paired_w{w}"].numpy(), arrays[f"copy_any_w{w}"].numpy())
        region = arrays[f"region_only_w{w}"].numpy() if f"region_only_w{w}" in arrays else np.zeros_like(own)
        out[w] = np.where(own, 1, np.where(region, 2, 0))
    return out


def _bench_tables(folder: Path) -> dict[str, list[dict]]:
    s, rows = _summary(folder), _world_rows(folder)
    marks = _bench_marks(folder, s, _saved_samples(folder, "bench_report"))
    out = []
    for i, r in enumerate(rows):
        row = {"prompt_index": i, "prompt": r["prompt"], "kind": r["kind"], "m": r.get("m"),
               "regime": r.get("regime"), "template": r.get("template"), "split": r.get("split"),
               "label": r.get("label"), "paired_id": (r.get("paired_ids") or [None])[0]}
        for w, mk in marks.items():
            row[f"copy_rate_w{w}"] = float((mk[i] == 1).mean())
        out.append(row)
    return {"prompts.csv": out}


@section("bench", "Graded world report: copying vs duplication", lambda d: (d / "bench_report.json").exists(),
         tables=_bench_tables)
def _bench(folder: Path, page: Page) -> str:
    s = _summary(folder)
    tree = read_json(folder / "bench_report.json")["data"]
    arrays = _saved_samples(folder, "bench_report")
    n = s["samples_per_prompt"]
    dup: dict[tuple, dict] = {}  # one row per (regime, m), the copy rate at each w beside each other
    for r in s.get("by_duplication", []):
        row = dup.setdefault((r["regime"], r["m"]), {"regime": r["regime"], "m": r["m"], "prompts": r["n_prompts"]})
        row[f"copy rate, w = {r['w']:g}"] = r["copy_rate"]
        row[f"SSIM to paired, w = {r['w']:g}"] = r.get("ssim")
    neg = [{"w": float(w), **v} for w, v in s.get("negative_copy_rate", {}).items()]
    tpl = [{"w": float(w), **v} for w, v in s.get("template", {}).items() if isinstance(v, dict)]
    kinds = ", ".join(f"{c} {k}" for k, c in s["prompts"].items())
    intro = (f"World {s['world']}: {n} samples per prompt (seeds {s['seeds'][0]}–{s['seeds'][-1]}), {kinds} prompts "
             f"({s.get('n_positive')} positive, {s.get('n_negative')} negative), {s['steps']} steps of {s['solver']}. "
             f"Copy rule: {s['copy_rule']}.")
    out = [_p(intro), table(list(dup.values()), caption=f"Copy rate of the paired image by duplication count m and "
                                                       f"caption regime ({n} samples per prompt)"),
           table(tpl, caption="Template prompts: the rule on the template region (masked), the rest, the whole"),
           table(neg, caption="Negative prompts: copy rate of any training image, per subtype"),
           _world_prompts(folder, s, arrays, _bench_marks(folder, s, arrays), extra=("m", "regime", "split")),
           '<details class="grids"><summary>The labelled grids saved by the run</summary>'
           + _figures(folder, {f"grid_w{w:g}": f"Labelled grid at w = {w:g}: first column the paired training image; "
                               "red frame: copy, orange: template region only." for w in s["weights"]}) + "</details>"]
    return "".join(out) + provenance_block(tree.get("provenance"), copy_rule=s["copy_rule"])


# ---- Kim et al. ---------------------------------------------------------------------------------------------------

def _kim_load(folder: Path):
    return KimResult.load(folder)


def _kim_tables(folder: Path) -> dict[str, list[dict]]:
    res = _kim_load(folder)
    return {"prompts.csv": kim_prompt_rows(res)} if res.summary is not None else {}


KIM_FIGURES = ("F1_loss", "F2_cosines", "F3_dispersion", "F4_decomposition", "F5_D_vs_severity", "F6_sweep")


def kim_captions(res) -> dict[str, str]:
    """Figure captions with n and the confidence intervals saved in the summary."""
    s = res.summary
    n = (f"n = {s.n_memorized} memorized (copy rate ≥ 1/2) and {s.n_nonmemorized} non-memorized (no copy) prompts "
         f"of {s.n_prompts}, {s.n_seeds} seeds each")
    lo, hi = s.pearson_D1_ci
    lo2, hi2 = s.pearson_D1_selfref_ci
    return {
        "F1_loss": f"A1. Guided vs conditional denoising loss over t, group means; {n}, {res.config.draws} noise "
                   "draws per timestep.",
        "F2_cosines": f"A2. Signed cosine between noise-prediction terms and the paired image over steps; {n}.",
        "F3_dispersion": f"A3. Across-seed dispersion of x_t and x0_hat relative to step 0; {n}.",
        "F4_decomposition": f"A4. Decomposition coefficients w0, wT per prompt (colour: {s.primary_severity} "
                            f"severity); dashed: the pure-noise schedule; {s.n_prompts} prompts, {s.n_seeds} seeds.",
        "F5_D_vs_severity": f"A4. Schedule deviation D1 vs {s.primary_severity}: Pearson r = {s.pearson_D1:.3f} "
                            f"(95 % bootstrap CI {lo:.3f} to {hi:.3f}); training-data-free D1: r = "
                            f"{s.pearson_D1_selfref:.3f} (CI {lo2:.3f} to {hi2:.3f}); {s.n_prompts} prompts; "
                            "colour: copy rate.",
        "F6_sweep": f"A5. Severity and D1 vs guidance g, group means; {n}.",
    }


@section("kim", "How it memorizes (Kim et al. 2025)", lambda d: (d / "kimresult.json").exists(), tables=_kim_tables)
def _kim(folder: Path, page: Page) -> str:
    res = _kim_load(folder)
    s = res.summary
    if s is None:  # prompts without training images: only the training-data-free analyses ran
        skipped = "; ".join(f"{k}: {v}" for k, v in (getattr(res, "skipped", None) or {}).items())
        return _p(f"No prompt had a paired training image, so D1/D2 and the severity correlations were not computed"
                  f"{' (' + skipped + ')' if skipped else ''}. The training-data-free results are in summary.json.")
    lo, hi = s.pearson_D1_ci
    findings = [
        {"finding": "A1: guided loss / conditional loss", "memorized": s.loss_inflation_mem,
         "not memorized": s.loss_inflation_nonmem},
        {"finding": "A2: first-step cos(eps_c, x)", "memorized": s.first_step_cos_eps_c_x_mem,
         "not memorized": s.first_step_cos_eps_c_x_nonmem},
        {"finding": "A3: dispersion of x0_hat, step 5 / step 0", "memorized": s.V_ratio_x0_hat_step5_mem,
         "not memorized": s.V_ratio_x0_hat_step5_nonmem},
    ]
    intro = (f"{s.n_prompts} prompts ({s.n_memorized} memorized, {s.n_nonmemorized} with no copy), {s.n_seeds} seeds, "
             f"g = {res.config.guidance:g}; severity = {s.primary_severity} to the paired training image. A4: Pearson "
             f"r(D1, severity) = {s.pearson_D1:.3f} (95 % CI {lo:.3f} to {hi:.3f}), Spearman {s.spearman_D1:.3f}.")
    rows = kim_prompt_rows(res)
    for r in rows:
        r["verdict"] = Raw(f'<span class="{"verdict-copy" if r["verdict"] == "memorized" else "verdict-no"}">'
                           f'{r["verdict"]}</span>', r["verdict"])
        r["prompt"] = Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"])
    out = [_p(intro), table(findings, caption="Group means"),
           "<h3>Per prompt</h3>" + _scroll(table(rows, caption=f"{len(rows)} prompts; verdict: memorized when at "
                                                               "least half the seeds copy (prompts.csv)")),
           "<h3>Figures</h3>", _figures(folder, kim_captions(res), [f"{n}.png" for n in KIM_FIGURES])]
    exported = sorted((folder / "figures").glob("F*.*")) if (folder / "figures").is_dir() else []
    if exported:
        out.append("<p class='files'>Figures for a paper: " + ", ".join(page.link(p) for p in exported) + "</p>")
    return "".join(out) + provenance_block(res.to_dict()[0]["provenance"], severity=s.primary_severity)


# ---- theory -------------------------------------------------------------------------------------------------------

def _is_theory(d: Path) -> bool:
    s = _summary(d)
    return bool(s) and "figures" in s and "wall_s" in s and "provenance" in s


@section("theory", "Theory (Ye et al. 2025)", _is_theory)
def _theory(folder: Path, page: Page) -> str:
    s = _summary(folder)
    scalars = [{"quantity": k, "value": v} for k, v in s.items()
               if isinstance(v, (int, float, bool, str)) and k not in ("wall_s",)]
    for k, v in s.items():
        if isinstance(v, dict) and all(isinstance(x, (int, float, bool)) for x in v.values()) and len(v) <= 8:
            scalars += [{"quantity": f"{k}.{kk}", "value": x} for kk, x in v.items()]
    tables = s.get("tables") or {}
    out = [table(scalars, caption=f"Summary ({folder.name}; {s['wall_s']:.1f} s)", sortable=False)]
    for name, rows in tables.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            out.append(table(rows, caption=f"Table: {name.replace('_', ' ')}"))
    names = [f for f in s.get("figures", []) if (folder / f).exists()]
    out.append(_figures(folder, {}, names or None))
    return "".join(out) + provenance_block(s.get("provenance"))


# ---- pruning ------------------------------------------------------------------------------------------------------

def _is_prune(d: Path) -> bool:
    s = _summary(d)
    return "methods" in s and "settings" in s


def _prune_rows(folder: Path) -> list[dict]:
    t = PruneTable.from_dict(_summary(folder))
    rows = []
    for m, ms in t.methods.items():
        row = {"method": m, "ours": ms.ours, "runs": ms.runs}
        for k in METRICS:
            sp, name = getattr(ms, k), k.replace("_", " ")
            row[f"{name}, mean"], row[f"{name}, std"] = sp.mean, sp.std
        for k in METRICS:
            if k in ms.delta:
                row[f"Δ {k.replace('_', ' ')} vs original"] = ms.delta[k].mean
        rows.append(row)
    return rows


def _prune_runs(folder: Path) -> list[dict]:
    """One row per saved run (``runs/<method>-<seed>.json``): its metrics and how the model was made."""
    rows = []
    for path in sorted((folder / "runs").glob("*.json")):
        r = read_json(path)
        rows.append({"method": r["method"], "seed": r["seed"], **r["metrics"], "heads removed": len(r["removed"]),
                     "ratio": r.get("ratio"), "finetune_steps": r.get("finetune_steps"),
                     "scoring_copy_rate": r.get("scoring_copy_rate")})
    return rows


@section("prune", "Head pruning (Table 1)", _is_prune,
         tables=lambda d: {"methods.csv": _prune_rows(d), "runs.csv": _prune_runs(d)})
def _prune(folder: Path, page: Page) -> str:
    s = _summary(folder)
    rows = _prune_rows(folder)
    runs = ", ".join(f"{r['method']}: {r['runs']}" for r in rows)
    return (table(rows, caption=f"Mean and sample std over runs (runs per method: {runs}; std needs two); Δ: mean "
                               "run-by-run difference to the original model")
            + table(_prune_runs(folder), caption="Every run (runs.csv)")
            + provenance_block(None, settings=s["settings"]))


# ---- detection ----------------------------------------------------------------------------------------------------

def _is_detect(d: Path) -> bool:
    return (d / "scores.csv").exists() and "delong" in _summary(d)


def _scores(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _detect_prompts(folder: Path) -> list[dict]:
    """scores.csv pivoted: one row per prompt, one column per detector and n (the score at that setting)."""
    per: dict[str, dict] = {}
    for r in _scores(folder):
        row = per.setdefault(r["prompt_id"], {k: _num(r[k]) if k == "m" else r[k] for k in
                                              ("prompt_id", "prompt", "kind", "m", "split", "label_planted",
                                               "label_measured")})
        row[f"{r['detector']} n={r['n_gen']}"] = _num(r["score"])
    return list(per.values())


@section("detect", "Detection", _is_detect, tables=lambda d: {"prompts.csv": _detect_prompts(d)})
def _detect(folder: Path, page: Page) -> str:
    s = _summary(folder)
    rows = [{"detector": r["detector"], "n": r["n_gen"], "label": r["label"], "AUC": r["auc"],
             "AUC 95 % CI": r.get("auc_ci"), "TPR@1%FPR": r["tpr_at_1fpr"], "TPR@0.1%FPR": r["tpr_at_01fpr"],
             "n pos": r.get("n_pos"), "n neg": r.get("n_neg"), "NFE/gen": r["nfe_per_generation"],
             "s/prompt": r["seconds_per_prompt"], "status": r.get("status")} for r in s["rows"]]
    prompts = _detect_prompts(folder)
    for r in prompts:
        r["prompt"] = Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"])
    shown = prompts[:500]
    more = f" (first 500 of {len(prompts)}; all in prompts.csv)" if len(prompts) > 500 else ""
    skipped = "".join(f"<li>{html.escape(str(x.get('detector')))} at n = {x.get('n_gen')}: "
                      f"{html.escape(str(x.get('reason')))}</li>" for x in s.get("skipped", []))
    return (table(rows, caption="Evaluation split: AUC with its 95 % CI, conservative TPR at fixed FPR (thresholds "
                               "calibrated on the calibration split)")
            + (f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else "")
            + "<h3>Per prompt</h3>" + _scroll(table(shown, caption=f"Each detector's own score per prompt{more}; "
                                                                  "labels: 1 = memorized"))
            + provenance_block(s.get("provenance"), labels=s.get("labels"), split=s.get("split")))
