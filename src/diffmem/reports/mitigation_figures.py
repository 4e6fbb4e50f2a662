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


def _err(value: float, ci, scale: float = 1.0) -> list[float]:
    """[below, above] error-bar lengths of a saved 95 % interval around ``value`` (0, 0 when none was saved)."""
    if not ci:
        return [0.0, 0.0]
    return [max(0.0, value - scale * ci[0]), max(0.0, scale * ci[1] - value)]


def plot_pareto(result, ax=None):
    """Memorization vs quality (MemBench's trade-off, Hong et al., arXiv 2407.17095): trigger-set copy rate after
    the remedy against the general-set alignment change, one point per method, setting and gating (gated hollow,
    ours as stars) with the saved 95 % bootstrap intervals as error bars, the saved Pareto front as a line; the
    plain baseline at (0, copy rate before)."""
    import matplotlib.pyplot as plt

    s = load_summary(result)
    ax = ax or plt.subplots(figsize=(7.5, 4.5))[1]
    methods = sorted({r.method for r in s.rows})
    colors = {m: plt.cm.tab20(i % 20) if len(methods) > 10 else plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for m in methods:
        for gated in (False, True):
            rows = [r for r in s.rows if r.method == m and r.gated == gated]
            if not rows:
                continue
            x = [100 * (r.general_alignment_delta or 0.0) for r in rows]
            y = [r.trigger_copy_rate_after for r in rows]
            # [2, n] lengths below and above each point
            xerr = [[_err(v, r.general_alignment_delta_ci, 100)[k] for v, r in zip(x, rows, strict=True)]
                    for k in (0, 1)]
            yerr = [[_err(v, r.trigger_copy_rate_after_ci)[k] for v, r in zip(y, rows, strict=True)] for k in (0, 1)]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=colors[m], elinewidth=0.7, alpha=0.6)
            ax.scatter(x, y, marker="*" if rows[0].ours else "o", s=90 if rows[0].ours else 34, zorder=3,
                       facecolors="none" if gated else colors[m], edgecolors=colors[m],
                       label=f"{m}{' (ours)' if rows[0].ours else ''}{', gated' if gated else ''}")
    front = sorted(s.pareto, key=lambda d: d["trigger_copy_rate_after"])
    if front:
        ax.plot([100 * (d["general_alignment_delta"] or 0.0) for d in front],
                [d["trigger_copy_rate_after"] for d in front], "k--", lw=1, label="Pareto front")
    if s.rows:
        ax.scatter([0.0], [s.rows[0].trigger_copy_rate_before], marker="x", c="k", s=50, zorder=4,
                   label="plain sampling (before)")
    ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
    if s.rows and s.goal:  # the goal's corner: few copies left, little alignment lost
        drop = 100 * s.goal.get("alignment_drop", 0.0)
        top = (1 - s.goal.get("copy_cut", 1.0)) * s.rows[0].trigger_copy_rate_before
        ax.axvspan(-drop, max(ax.get_xlim()[1], 1.0), ymax=(top + 0.04) / 1.08, color="tab:green", alpha=0.08,
                   zorder=0, label=f"goal (copy rate ≤ {top:.2g}, ≤ {drop:g} points lost)")
    # points cluster near no change while a few methods lose tens of points: linear within the goal's band
    ax.set_xscale("symlog", linthresh=max(2.0, 100 * (s.goal or {}).get("alignment_drop", 0.0)))
    lo, hi = ax.get_xlim()
    ticks = [t for t in (-100, -50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("general-set alignment change, after − before (percentage points; symlog axis)")
    ax.set_ylabel("trigger-set copy rate after (fraction of samples)")
    ax.set_ylim(-0.04, 1.04)
    ax.set_title(f"Mitigations on {s.provenance['subject']['subject']}: copies left vs alignment lost")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return ax
