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
from diffmem.reports.detection_figures import plot_roc, roc_curves
from diffmem.reports.mitigation_figures import plot_pareto
from diffmem.reports.parts import Page, Raw, data_uri, drawn, figure, provenance_block, section, table, thumb
from diffmem.reports.tables import flat, kim_prompt_rows

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
    rows, s = _world_rows(folder), _summary(folder)
    out = [{"prompt_index": i, "prompt": r["prompt"], "kind": r["kind"], "label": r.get("label"),
            "paired_id": (r.get("paired_ids") or [None])[0]} for i, r in enumerate(rows)]
    arrays = _saved_samples(folder, "world_report")
    if s.get("weights") and f"copy_any_w{s['weights'][0]:g}" in arrays:  # runs that saved per-sample verdicts
        for w, mk in _copy_marks(folder, s, arrays).items():
            for i, row in enumerate(out):
                row[f"copy_rate_w{w}"] = float((mk[i] == 1).mean())
    return {"prompts.csv": out}


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
    arrays = _saved_samples(folder, "world_report")
    marks = _copy_marks(folder, s, arrays) if f"copy_any_w{s['weights'][0]:g}" in arrays else None
    out.append(_world_prompts(folder, s, arrays, marks, paired_col=True))
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
    copies = "" if marks is None else str(int((marks[i] == 1).sum()))  # sorts by the copies at this w
    return Raw("".join(tiles), copies)


def _world_prompts(folder: Path, s: dict, arrays: dict, marks: dict | None = None, extra=(),
                   paired_col: bool = False) -> str:
    """The labelled sample grid: one row per prompt (text, kind, digit, paired image, the samples at every w)."""
    rows = _world_rows(folder)
    if not rows or not arrays:
        return ""
    weights = [f"{w:g}" for w in s["weights"]]
    any_x = arrays[f"w{weights[0]}"]
    paired = {}
    if paired_col and "paired" in arrays:  # saved by the run (every prompt)
        paired = {i: thumb(x, size=48, title=f"paired training image {rows[i]['paired_ids'][0]}")
                  for i, (x, has) in enumerate(zip(arrays["paired"], arrays["has_paired"], strict=True)) if has}
    elif paired_col:  # older runs: cut from the saved grid (the first 8 prompts of each kind)
        paired = _paired_tiles(folder, weights[0], rows, tuple(any_x.shape[-2:]))
    seeds = s["seeds"]
    table_rows, digits = [], any(r.get("label") is not None for r in rows)
    for i, r in enumerate(rows):
        row = {"#": i, "prompt": Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"]),
               "kind": r["kind"], **{k: r.get(k) for k in extra}, **({"digit": r.get("label")} if digits else {})}
        if paired_col:
            row["paired"] = Raw(paired.get(i, "–"), str((r.get("paired_ids") or [""])[0]))
        for w in weights:
            row[f"w = {w}"] = _strip(arrays[f"w{w}"], i, w, seeds, (marks or {}).get(w))
        table_rows.append(row)
    if marks:
        caption = (f"Per-prompt samples (seeds {seeds[0]}–{seeds[-1]} left to right at each w); red frame: the saved "
                   "verdict says copy (planted and ladder prompts: of the paired image; others: of any training "
                   "image), orange: a copy of the template region only. A w column sorts by its number of copies.")
    else:
        caption = (f"Per-prompt samples (seeds {seeds[0]}–{seeds[-1]} left to right at each w). Per-sample copy "
                   "verdicts are not saved by this world report, so no frame marks copies here; the rates above are "
                   "the verdicts.")
    return "<h3>Per-prompt samples</h3>" + table(table_rows, caption=caption, scroll=True)


# ---- graded world report (duplication ladder) ---------------------------------------------------------------------

PAIRED_KINDS = ("planted", "ladder")  # prompts whose copy must be of their own paired image


def _copy_marks(folder: Path, s: dict, arrays: dict) -> dict:
    """w -> [P, N] ints from the saved verdicts: 1 a copy (of the paired image for planted and ladder prompts, of any
    training image for the others), 2 a copy of the template region only."""
    ladder = np.array([r["kind"] in PAIRED_KINDS for r in _world_rows(folder)])[:, None]
    out = {}
    for w in (f"{w:g}" for w in s["weights"]):
        own = np.where(ladder, arrays[f"copy_paired_w{w}"].numpy(), arrays[f"copy_any_w{w}"].numpy())
        region = arrays[f"region_only_w{w}"].numpy() if f"region_only_w{w}" in arrays else np.zeros_like(own)
        out[w] = np.where(own, 1, np.where(region, 2, 0))
    return out


def _bench_tables(folder: Path) -> dict[str, list[dict]]:
    s, rows = _summary(folder), _world_rows(folder)
    marks = _copy_marks(folder, s, _saved_samples(folder, "bench_report"))
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
           _world_prompts(folder, s, arrays, _copy_marks(folder, s, arrays), extra=("m", "regime", "split")),
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
           "<h3>Per prompt</h3>" + table(rows, caption=f"{len(rows)} prompts; verdict: memorized when at "
                                                               "least half the seeds copy (prompts.csv)", scroll=True),
           "<h3>Figures</h3>", _figures(folder, kim_captions(res), [f"{n}.png" for n in KIM_FIGURES])]
    exported = sorted((folder / "figures").glob("F*.*")) if (folder / "figures").is_dir() else []
    if exported:
        out.append("<p class='files'>Figures for a paper: " + ", ".join(page.link(p) for p in exported) + "</p>")
    return "".join(out) + provenance_block(res.to_dict()[0]["provenance"], severity=s.primary_severity)


# ---- theory -------------------------------------------------------------------------------------------------------

def _is_theory(d: Path) -> bool:
    s = _summary(d)
    return bool(s) and "figures" in s and "wall_s" in s and "provenance" in s


THEORY_TABLES = {  # what each saved table of the loss-gap experiment varies (the rest held fixed)
    "dim": "Loss gap vs dimension d at t = 0.3, n = 1000, s² = 1",
    "var": "Loss gap vs component variance s² at t = 0.3, n = 1000, d = 32",
    "breakdown": "Where the small-t closed form breaks down (d = 8, s² = 0.25)",
}


def _theory_kind(s: dict) -> str:
    names = [Path(f).stem for f in s.get("figures", [])]
    return next((k for k in ("loss_gap", "scores", "sweep", "teaser") if any(n.startswith(k) for n in names)), "")


def _theory_captions(s: dict) -> dict[str, str]:
    """Figure captions with the sample sizes and error bars of each experiment's summary."""
    n = s.get("n")
    n = ", ".join(map(str, n)) if isinstance(n, list) else n
    agree = "yes" if s.get("prop41_all_agree") else "no"
    caps = {"loss_gap": f"Prop. 4.1: DSM-loss gap between the empirical and the true denoiser vs diffusion time t "
                        f"(unitless), n = {n} training points in d = {s.get('dim')}; Monte Carlo over {s.get('draws')} "
                        "draws, bars ± 1 standard error; dashed: the small-t closed form. The gap equals the Fisher "
                        f"divergence at every t within the MC error: {agree} (max |z| = "
                        f"{s.get('prop41_max_z', float('nan')):.2f}).",
            "scores": f"Exact empirical vs true score (n = {n}, d = {s.get('dim')}): collapse of the empirical "
                      "posterior onto one training point as t → 0, and the Lipschitz constants with their bounds."}
    return caps


@section("theory", "Theory (Ye et al. 2025)", _is_theory)
def _theory(folder: Path, page: Page) -> str:
    s = _summary(folder)
    kind = _theory_kind(s)
    scalars = [{"quantity": k, "value": v} for k, v in s.items()
               if isinstance(v, (int, float, bool, str)) and k not in ("wall_s",)]
    for k, v in s.items():  # small nested dicts of numbers (e.g. memorization.empirical.memorization_ratio)
        nested = flat(v, f"{k}.") if isinstance(v, dict) and k not in ("tables", "provenance") else {}
        if nested and all(isinstance(x, (int, float, bool)) for x in nested.values()) and len(nested) <= 8:
            scalars += [{"quantity": kk, "value": x} for kk, x in nested.items()]
    tables = s.get("tables") or {}
    what = f"the {kind.replace('_', '-')} experiment" if kind else folder.name
    out = [table(scalars, caption=f"Summary of {what} ({s['wall_s']:.1f} s)", sortable=False)]
    for name, rows in tables.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            cap = THEORY_TABLES.get(name, f"Table: {name.replace('_', ' ')}")
            se = "; gap_se: Monte Carlo standard error of the gap" if "gap_se" in rows[0] else ""
            out.append(table(rows, caption=cap + se))
    names = [f for f in s.get("figures", []) if (folder / f).exists()]
    out.append(_figures(folder, _theory_captions(s), names or None))
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
    counts = {r["runs"] for r in rows}
    runs = (f"{counts.pop()} runs per method" if len(counts) == 1
            else "runs per method: " + ", ".join(f"{r['method']}: {r['runs']}" for r in rows))
    return (table(rows, caption=f"Mean and sample std over runs ({runs}; std needs two); Δ: mean run-by-run "
                               "difference to the original model (methods.csv)", scroll=True)
            + table(_prune_runs(folder), caption="Every run (runs.csv)", scroll=True)
            + provenance_block(None, settings=s["settings"]))


# ---- mitigation ---------------------------------------------------------------------------------------------------

def _is_mitigate(d: Path) -> bool:
    s = _summary(d)
    return isinstance(s.get("rows"), list) and "pareto" in s and "provenance" in s


# the columns a reader compares first, in this order, with their header; any other saved column follows as saved
MITIGATION_COLUMNS = {
    "method": "method", "setting": "setting", "gated": "gated", "trigger_copy_rate_before": "copy rate before",
    "trigger_copy_rate_after": "copy rate after", "trigger_copy_rate_after_ci": "copy after 95 % CI",
    "copy_cut_ci": "copy cut 95 % CI", "alignment_before": "alignment before", "alignment_after": "alignment after",
    "general_alignment_delta": "general Δ alignment (pts)", "general_alignment_delta_ci": "general Δ alignment CI",
    "fid_before": "FID before", "fid_after": "FID after", "general_fid_delta": "general Δ FID",
    "template_copy_rate_after": "template copy after", "extra_nfe_per_image": "extra NFE / image",
    "nfe_ratio": "NFE ×", "seconds_per_image": "s / image", "false_gate_rate": "false gate rate",
    "trigger_gate_rate": "trigger gate rate", "on_pareto": "on Pareto front", "meets_goal": "meets goal"}
POINTS = ("general_alignment_delta", "general_alignment_delta_ci")  # fractions shown in percentage points


def _mitigation_row(r: dict) -> dict:
    """A saved row with readable headers: known columns first, then every other saved column under its own name."""
    row = {}
    for key, head in MITIGATION_COLUMNS.items():
        v = r.get(key)
        if key in POINTS and v is not None:
            v = [100 * x for x in v] if isinstance(v, (list, tuple)) else 100 * v
        row[head] = Raw(html.escape(f"{v} (ours)"), str(v)) if key == "method" and r.get("ours") else v
    row.update({k: v for k, v in r.items() if k not in MITIGATION_COLUMNS and k not in ("ours",)})
    return row


def _draw_pareto(folder: Path):
    return plot_pareto(folder).figure


@section("mitigate", "Mitigation: copies removed and what it costs", _is_mitigate,
         figures=lambda d: {"pareto": lambda: _draw_pareto(d)})
def _mitigate(folder: Path, page: Page) -> str:
    s = _summary(folder)
    p, rows, goal, gate = s["provenance"], s["rows"], s.get("goal") or {}, s.get("gate")
    n_gen = p.get("n_gen")
    n_t, n_g = len(p.get("trigger") or []), len(p.get("general") or [])
    sub = p.get("subject") or {}
    intro = (f"Subject {sub.get('subject')}: trigger set {n_t} memorized prompts, general set {n_g} prompts, "
             f"{n_gen} generation(s) per prompt (seeds {_seeds(p.get('seeds'))}, the same seeds before and after), "
             f"CFG weight {p.get('guidance')}, {p.get('steps')} steps. Copy rule: {p.get('copy_rule')}. Alignment: "
             f"the share of samples the evaluator's aligner labels as the prompt's label (see provenance); general "
             f"Δ in percentage points (after − before). Intervals: {p.get('ci')}. Cost: {p.get('cost')}.")
    if goal:
        intro += (f" Goal: copy rate cut by ≥ {goal.get('copy_cut', 0):.0%}, general alignment drop ≤ "
                  f"{100 * goal.get('alignment_drop', 0):g} points, general FID rise ≤ {goal.get('fid_rise', 0):.0%}, "
                  f"NFE ≤ {goal.get('nfe_ratio')}× plain.")
    out = [_p(intro)]
    if gate:
        thr = gate.get("threshold") or {}
        out.append(_p(f"Gated rows apply the remedy only to prompts flagged by {gate['detector'].get('name')} "
                      f"(threshold {thr.get('value', float('nan')):.4g}, calibrated at FPR {thr.get('fpr_target')} "
                      f"on {thr.get('n_negatives')} negatives); it flagged {_pct(gate.get('trigger_gate_rate'))} of "
                      f"the trigger set and {_pct(gate.get('false_gate_rate'))} of the general set (false gates); "
                      f"its {gate.get('nfe_per_image', 0):g} NFE per image are in the gated rows' cost."))
    caption = (f"Every method and setting ({len(rows)} rows; n = {n_t} × {n_gen} trigger and {n_g} × {n_gen} general "
               "samples per row; 95 % bootstrap CIs over prompts). rows.csv and summary.json hold the same numbers.")
    out.append(table([_mitigation_row(r) for r in rows], caption=caption, scroll=True))
    pairs = _gated_pairs(rows)
    if pairs:
        out.append("<h3>Gated vs ungated</h3>" + table(pairs, caption="The same method and setting with the remedy "
                                                                       "on every prompt and only on flagged ones"))
    cap = (f"Trigger-set copy rate after each method (n = {n_t * (n_gen or 0)} samples, bars: 95 % bootstrap CI over "
           f"the {n_t} prompts) against the general-set alignment change (n = {n_g * (n_gen or 0)} samples, bars: its "
           "95 % CI; symlog axis, linear within the goal's band); hollow: gated; stars: ours; dashed: the Pareto front "
           "(fewer copies, less alignment lost); ×: plain sampling; green: the goal.")
    out.append(drawn(lambda: _draw_pareto(folder), "pareto", cap))
    out.append(_p("Pareto front: " + "; ".join(f"{d['method']} {d['setting']}{' gated' if d.get('gated') else ''}"
                                               for d in s["pareto"])) if s["pareto"] else "")
    more = {k: v for k, v in p.items() if k not in ("subject", "seeds", "methods", "trigger", "general",
                                                    "calibration")}
    return "".join(out) + provenance_block({"model": sub.get("model"), "seeds": p.get("seeds"), **more},
                                           methods=p.get("methods"))


def _seeds(seeds) -> str:
    return "–" if not seeds else f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _gated_pairs(rows: list[dict]) -> list[dict]:
    """One row per (method, setting) run both ways: copy rate, general alignment change and cost, side by side."""
    by = {(r["method"], r["setting"], bool(r["gated"])): r for r in rows}
    out = []
    for (m, st, gated), r in by.items():
        g = by.get((m, st, True))
        if gated or g is None:
            continue
        d = [x.get("general_alignment_delta") for x in (r, g)]
        out.append({"method": m, "setting": st, "copy after, ungated": r["trigger_copy_rate_after"],
                    "copy after, gated": g["trigger_copy_rate_after"],
                    "general Δ alignment (pts), ungated": None if d[0] is None else 100 * d[0],
                    "general Δ alignment (pts), gated": None if d[1] is None else 100 * d[1],
                    "extra NFE, ungated": r.get("extra_nfe_per_image"),
                    "extra NFE, gated": g.get("extra_nfe_per_image"),
                    "trigger gate rate": g.get("trigger_gate_rate"), "false gate rate": g.get("false_gate_rate")})
    return out


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


def _detect_labels(folder: Path) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in _summary(folder)["rows"]))


def _detect_table(saved: list[dict]) -> list[dict]:
    """The saved rows pivoted: one row per (detector, n), the metrics of each label side by side."""
    out: dict[tuple, dict] = {}
    for r in saved:
        row = out.setdefault((r["detector"], r["n_gen"]), {"detector": r["detector"], "n": r["n_gen"]})
        lab = r["label"]
        row.update({f"AUC, {lab}": r["auc"], f"AUC 95 % CI, {lab}": r.get("auc_ci"),
                    f"TPR@1%FPR, {lab}": r["tpr_at_1fpr"], f"TPR@0.1%FPR, {lab}": r["tpr_at_01fpr"]})
    for r in saved:  # cost and status after the metrics
        out[r["detector"], r["n_gen"]].update({"NFE / generation": r["nfe_per_generation"],
                                               "s / prompt": r["seconds_per_prompt"], "status": r.get("status")})
    return list(out.values())


def _draw_roc(folder: Path, label: str):
    return plot_roc(roc_curves(folder, label))


def _roc_caption(folder: Path, label: str) -> str:
    s = _summary(folder)
    info = (s.get("labels") or {}).get(label) or {}
    rows = [r for r in s["rows"] if r["label"] == label]
    n = f"{rows[0].get('n_pos')} positives and {rows[0].get('n_neg')} negatives" if rows else "no rows"
    how = info.get("rule") or "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                                        for k, v in info.items() if k.endswith("kinds"))
    return (f"ROC curves on the evaluation split, {label} labels ({n}; {how}), each detector at its largest number "
            "of generations; legend: AUC with its 95 % stratified bootstrap CI as saved by the run. Drawn from "
            "scores.csv.")


@section("detect", "Detection", _is_detect, tables=lambda d: {"prompts.csv": _detect_prompts(d)},
         figures=lambda d: {f"roc_{lab}": (lambda lab=lab: _draw_roc(d, lab)) for lab in _detect_labels(d)})
def _detect(folder: Path, page: Page) -> str:
    s = _summary(folder)
    rows, labels = _detect_table(s["rows"]), _detect_labels(folder)
    first = {lab: next(r for r in s["rows"] if r["label"] == lab) for lab in labels}
    counts = "; ".join(f"{lab} labels: {r.get('n_pos')} positives, {r.get('n_neg')} negatives"
                       for lab, r in first.items())
    prompts = _detect_prompts(folder)
    for r in prompts:
        r["prompt"] = Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"])
    shown = prompts[:500]
    more = f" (first 500 of {len(prompts)}; all in prompts.csv)" if len(prompts) > 500 else ""
    skipped = "".join(f"<li>{html.escape(str(x.get('detector')))} at n = {x.get('n_gen')}: "
                      f"{html.escape(str(x.get('reason')))}</li>" for x in s.get("skipped", []))
    return (table(rows, caption=f"Evaluation split ({counts}): AUC with its 95 % CI, conservative TPR at a fixed FPR "
                               "(thresholds calibrated on the calibration split's negatives); one row per detector and "
                               "number of generations n, one column group per label", scroll=True)
            + (f"<p>Skipped:</p><ul>{skipped}</ul>" if skipped else "")
            + "".join(drawn(lambda lab=lab: _draw_roc(folder, lab), f"roc_{lab}", _roc_caption(folder, lab))
                      for lab in labels)
            + "<h3>Per prompt</h3>" + table(shown, caption=f"Each detector's own score per prompt{more}; "
                                                                  "labels: 1 = memorized", scroll=True)
            + provenance_block(s.get("provenance"), labels=s.get("labels"), split=s.get("split")))


# ---- audit --------------------------------------------------------------------------------------------------------

AUDIT_SHOWN = 500


def _audit_sample(folder: Path, sample: str | None) -> Raw:
    """The saved sample of an escalated prompt (``samples/<id>.safetensors`` beside its PNG) as a thumbnail."""
    if not sample:
        return Raw("–", "")
    path = folder / "samples" / Path(sample).with_suffix(".safetensors").name
    if not path.exists():
        return Raw("missing", "")
    return Raw(thumb(read_arrays(path)["x"], size=48, title=Path(sample).name), Path(sample).name)


@section("audit", "Audit: which prompts reproduce training images", lambda d: (d / "audit.json").exists())
def _audit(folder: Path, page: Page) -> str:
    a = read_json(folder / "audit.json")
    a = a.get("data", a)
    rows, nfe = a["rows"], a.get("nfe") or {}
    n_esc = sum(bool(r["escalated"]) for r in rows)
    judged = ("a threshold of {:.4g} on its oriented score decides memorized / clear".format(a["threshold"])
              if a.get("threshold") is not None else "no threshold was given, so escalated prompts carry no verdict")
    intro = (f"{len(rows)} prompts screened by {a['screen']} ({nfe.get('screen')} NFE); the top "
             f"{100 * a['fraction']:g} % ({n_esc} prompts) escalated to {a['expensive']} ({nfe.get('escalate')} NFE, "
             f"{a['n_gen']} generation(s) per prompt) and sampled once ({nfe.get('samples')} NFE); {judged}. Scores "
             "are oriented: higher = more likely memorized.")
    full = a.get("full")
    if full:
        intro += (f" Against scoring every prompt with {a['expensive']} ({full.get('nfe')} NFE): the audit keeps "
                  f"{full.get('kept')} of the {full.get('flagged')} prompts flagged {full.get('rule')} (recall "
                  f"{full.get('recall', float('nan')):.3f}) at {full.get('nfe_ratio') or float('nan'):.3f} of the "
                  "detection NFE.")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    shown = []
    for r in rows[:AUDIT_SHOWN]:
        v = r["verdict"]
        cls = {"memorized": "verdict-copy", "clear": "verdict-no", "screened out": "verdict-unjudged"}.get(v, "")
        shown.append({"rank": r["rank"], "prompt id": r["prompt_id"],
                      "prompt": Raw(f'<span class="text">{html.escape(r["prompt"])}</span>', r["prompt"]),
                      "verdict": Raw(f'<span class="{cls}">{html.escape(v)}</span>', v),
                      "expensive score": r.get("score"), "screen score": r.get("screen_score"),
                      "escalated": r.get("escalated"), "sample": _audit_sample(folder, r.get("sample")),
                      "nearest reference": r.get("nearest_ref"), "nearest-neighbour ratio": r.get("nearest_ratio")})
    more = f" (first {AUDIT_SHOWN} of {len(rows)}; all in audit.csv)" if len(rows) > AUDIT_SHOWN else ""
    caption = (f"Prompts ranked: escalated ones first by the expensive score, then the rest by the screen score{more}; "
               "sample: seed " + str((a["provenance"].get("seeds") or ["?"])[0]) + "; nearest-neighbour ratio ≤ 1/3 "
               "is a copy (only with --refs).")
    verdicts = ", ".join(f"{c} {v}" for v, c in counts.items())
    return (_p(intro) + _p(f"Verdicts: {verdicts}.") + table(shown, caption=caption, scroll=True)
            + provenance_block({k: v for k, v in a["provenance"].items() if k != "subject"},
                               model=(a["provenance"].get("subject") or {}).get("model"),
                               subject=(a["provenance"].get("subject") or {}).get("subject")))
