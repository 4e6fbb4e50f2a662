"""The report section of Kim, Kim & Lee (2025)'s revised theory: headline numbers beside the authors' Stable
Diffusion figures, premise and conclusion shares by group, and the saved figures (read from files only)."""

from __future__ import annotations

import html
from pathlib import Path

from diffmem.io import read_json
from diffmem.reports import sections as _builtin  # noqa: F401  (the built-in sections come first on a page)
from diffmem.reports.kim_theory_figures import KIM_THEORY_FIGURES
from diffmem.reports.parts import Page, figure, provenance_block, section, table

__all__ = ["group_rows", "selection_rows"]

HEADLINE = ("n_prompts", "n_seeds", "guidance", "lemma4_max_residual", "lemma4_max_residual_solver",
            "lemma4_affine_fraction", "lemma6_violations", "lemma6_violations_paper", "lemma6_transitions",
            "prop5_transitions", "prop5_condition_met", "prop5_condition_met_paper", "prop5_gain_positive_fraction",
            "prop5_violations", "prop5_unresolved", "thm7_clean_endpoints", "thm7_endpoints", "thm7_coverage",
            "thm7_coverage_unclean", "thm7_coverage_unclean_delta", "median_delta_sched_unclean", "similarity",
            "proximity_rho_negative_fraction", "proximity_rho_median", "selection_kept", "selection_dropped",
            "bands_intermediate_steps", "bands_overlap_steps_median")
AUTHORS = {"prop5_condition_met": "prop5_condition_met", "prop5_gain_positive_fraction": "prop5_gain_positive",
           "thm7_clean_endpoints": "thm7_clean_endpoints"}


def group_rows(summary: dict) -> list[dict]:
    """One row per (group, result): rows, premise share, conclusion share, conclusion share under the premise."""
    return [{"group": g, "result": name, **v} for g, by in summary.get("by_group", {}).items()
            for name, v in by.items()]


def selection_rows(summary: dict) -> list[dict]:
    """One row per group: proximity ρ (prompts with a defined ρ, share ρ < 0, median), the selection rule's kept
    and dropped prompts and the median number of intermediate states where the two distance bands overlap."""
    prox, sel = summary.get("proximity_by_group", {}), summary.get("selection", {}).get("by_group", {})
    bands = summary.get("bands", {}).get("by_group", {})
    return [{"group": g, "prompts_with_rho": v.get("n"), "rho_negative_fraction": v.get("negative_fraction"),
             "rho_median": v.get("median"), **{k: sel.get(g, {}).get(k) for k in ("kept", "dropped")},
             "bands_overlap_steps_median": bands.get(g)} for g, v in prox.items()]


def _tables(folder: Path) -> dict[str, list[dict]]:
    s = read_json(folder / "summary.json")
    return {"kim_theory_groups.csv": group_rows(s), "kim_theory_selection.csv": selection_rows(s)}


@section("kim-theory", "Kim et al.'s revised theory against the exact training law",
         lambda d: (d / "kimtheoryresult.json").exists() and (d / "summary.json").exists(), tables=_tables)
def _kim_theory(folder: Path, page: Page) -> str:
    s = read_json(folder / "summary.json")
    authors = s.get("authors_sd", {})
    head = [{"quantity": k, "here": s.get(k), "authors (SD)": authors.get(AUTHORS.get(k, ""), "")} for k in HEADLINE]
    out = [table(head, caption=f"Headline ({folder.name}; {s.get('wall_seconds', 0):.0f} s)", sortable=False),
           table(group_rows(s), caption="Premise and conclusion shares by group (kind / regime / rung m)",
                 scroll=True),
           table(selection_rows(s), caption=f"Proximity, the authors' selection rule and the forward-corruption "
                 f"bands by group (similarity: {s.get('similarity', '?')}; selection on the evaluation seeds)")]
    sel, bands = s.get("selection", {}), s.get("bands", {})
    if sel.get("vs_planted"):
        out.append(table([sel["vs_planted"]], caption="Selection against the ground truth", sortable=False))
    picks = [{"prompt": tag, **bands[tag]} for tag in ("memorized", "normal") if bands.get(tag)]
    if picks:
        out.append(table(picks, caption=f"Bands: most memorized (largest min-similarity) and least (smallest "
                                        f"max-similarity) prompt; {s.get('bands_intermediate_steps')} "
                                        f"intermediate states", sortable=False))
    figs = [folder / f"{n}.png" for n in KIM_THEORY_FIGURES if (folder / f"{n}.png").exists()]
    out.append('<div class="figs">' + "".join(figure(p, KIM_THEORY_FIGURES[p.stem].__doc__.split("\n")[0])
                                               for p in figs) + "</div>")
    out.append(f"<p>{html.escape('Per-prompt rows: prompts.csv')}</p>")
    return "".join(out) + provenance_block(s.get("provenance"))
