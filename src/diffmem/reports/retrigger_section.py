"""The report section of a re-trigger audit (``diffmem mitigate --retrigger``; the "Finding Dori" probe,
arXiv 2507.16880): per permanent edit, the copy rate before the edit, after it, and after a learned perturbation of
the prompt embedding — read from ``retrigger.json`` only."""

from __future__ import annotations

import html
from pathlib import Path

from diffmem.io import read_json
from diffmem.reports import sections as _builtin  # noqa: F401  (the built-in sections come first on a page)
from diffmem.reports.parts import Page, provenance_block, section, table

__all__ = ["retrigger_rows"]

COLUMNS = ("method", "trigger_copy_before", "trigger_copy_after", "control_copy_before", "control_copy_after",
           "fit_seconds", "audit_seconds")


def retrigger_rows(result: dict) -> list[dict]:
    """One row per audited model (the unedited one first): the copy rates and what the fit and the audit took."""
    return [{k: r.get(k) for k in COLUMNS} for r in result["rows"]]


@section("retrigger", "Re-trigger audit: do the copies come back?", lambda d: (d / "retrigger.json").exists(),
         tables=lambda d: {"retrigger.csv": retrigger_rows(read_json(d / "retrigger.json"))})
def _retrigger(folder: Path, page: Page) -> str:
    r = read_json(folder / "retrigger.json")
    prov = r.get("provenance", {})
    budget = prov.get("budget")
    bound = "unbounded" if budget is None else f"‖Δ‖ ≤ {budget:g}·‖e_p‖"
    intro = (f"{len(r['triggers'])} planted prompts (most duplicated first) and {len(r['controls'])} controls, "
             f"seeds {prov.get('seeds')}, guidance {prov.get('guidance')}; probe: {prov.get('probe_steps')} Adam "
             f"steps at lr {prov.get('lr')}, {bound}. \"after\" = the edited model with e_p + Δ. A control that "
             "copies after the probe means the probe itself makes copies, so the trigger rows prove little at that "
             "budget." + ("" if r.get("complete") else " Incomplete: a fit was still running when this was saved."))
    return (f"<p>{html.escape(intro)}</p>" + table(retrigger_rows(r), caption=r.get("how", ""))
            + provenance_block({k: v for k, v in prov.items() if k != "subject"},
                               subject=(prov.get("subject") or {}).get("subject")))
