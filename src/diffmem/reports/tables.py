"""Per-row tables of saved results as CSV (one row per prompt or run; pandas and the csv module read them as is)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from diffmem.detectors.harness import write_csv as write_columns

__all__ = ["write_csv", "kim_prompt_rows", "flat"]


def flat(d: dict, prefix: str = "") -> dict:
    """Nested dicts to one level with ``a.b`` keys; lists of numbers stay JSON text (one cell)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """A CSV of ``rows`` (columns: the union of their keys, in first-seen order; empty cell for a missing value)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return write_columns(Path(path), [{c: r.get(c) for c in columns} for r in rows], columns)


def kim_verdict(copy_rate: float) -> str:
    """The study's grouping: memorized when at least half the seeds copy, not memorized when none does."""
    return "memorized" if copy_rate >= 0.5 else "not memorized" if copy_rate == 0 else "partial"


def kim_prompt_rows(res) -> list[dict]:
    """One row per prompt of a saved :class:`~diffmem.analyses.kim.KimResult`: id, text, kind, verdict, scalars."""
    rows = []
    for p in res.prompts:
        sev = {f"severity.{k}": float(v) for k, v in p.severity.items()}
        rows.append({"prompt_id": p.id, "prompt": getattr(p, "text", "") or "", "kind": p.kind,
                     "verdict": kim_verdict(float(p.severity["copy_rate"])), **sev,
                     "D1": float(p.D1), "D2": float(p.D2), "D1_selfref": float(p.D1_selfref),
                     "D2_selfref": float(p.D2_selfref), "collapse_x_t": p.collapse_x_t})
    return rows
