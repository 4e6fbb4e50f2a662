"""Figures of a saved mitigation run (:class:`~diffmem.mitigations.harness.MitigationSummary`); nothing computed."""

from __future__ import annotations

from pathlib import Path

from diffmem.io import read_json
from diffmem.mitigations.harness import MitigationSummary

__all__ = ["plot_pareto", "load_summary"]


def load_summary(result) -> MitigationSummary:
    """A summary as given, from its dict, or from a run folder / ``summary.json`` path."""
    if isinstance(result, MitigationSummary):
        return result
    if isinstance(result, dict):
        return MitigationSummary.from_dict(result)
    path = Path(result)
    return MitigationSummary.from_dict(read_json(path / "summary.json" if path.is_dir() else path))


def plot_pareto(result, ax=None):
    """Memorization vs quality (MemBench's trade-off, Hong et al., arXiv 2407.17095): trigger-set copy rate after
    the remedy against the general-set alignment change, one point per method, setting and gating (gated hollow,
    ours as stars), the saved Pareto front as a line; the plain baseline at (0, copy rate before)."""
    import matplotlib.pyplot as plt

    s = load_summary(result)
    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    methods = sorted({r.method for r in s.rows})
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for m in methods:
        for gated in (False, True):
            rows = [r for r in s.rows if r.method == m and r.gated == gated]
            if not rows:
                continue
            x = [100 * (r.general_alignment_delta or 0.0) for r in rows]
            y = [r.trigger_copy_rate_after for r in rows]
            ax.scatter(x, y, marker="*" if rows[0].ours else "o", s=70 if rows[0].ours else 30,
                       facecolors="none" if gated else colors[m], edgecolors=colors[m],
                       label=f"{m}{' (ours)' if rows[0].ours else ''}{', gated' if gated else ''}")
    front = sorted(s.pareto, key=lambda d: d["trigger_copy_rate_after"])
    if front:
        ax.plot([100 * (d["general_alignment_delta"] or 0.0) for d in front],
                [d["trigger_copy_rate_after"] for d in front], "k--", lw=1, label="Pareto front")
    if s.rows:
        ax.scatter([0.0], [s.rows[0].trigger_copy_rate_before], marker="x", c="k", label="plain sampling")
    ax.set_xlabel("general-set alignment change (points)")
    ax.set_ylabel("trigger-set copy rate after")
    ax.set_title(f"mitigations on {s.provenance['subject']['subject']}")
    ax.legend(fontsize=6, loc="best")
    return ax
