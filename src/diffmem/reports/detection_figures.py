"""Figures of a saved detection run (``summary.json`` + ``scores.csv`` of ``diffmem.detectors.harness``).

:func:`roc_curves` reads the saved per-prompt scores and turns them into ROC points with
:func:`diffmem.evaluation.detection.roc_points` (the evaluation layer's scikit-learn curve); :func:`plot_roc` only
draws those points, with the AUC and its 95 % CI as saved by the run.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from diffmem.evaluation.detection import roc_points
from diffmem.io import read_json

__all__ = ["roc_curves", "plot_roc"]

STYLES = ("-", "--", ":", "-.")


def _read_scores(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def roc_curves(folder: str | Path, label: str = "planted", split: str = "evaluation") -> dict:
    """The ROC of every detector of a saved run at its largest number of generations, on ``split`` with ``label``
    labels: ``{"label", "split", "n_pos", "n_neg", "curves": [{"detector", "n_gen", "fpr", "tpr", "auc",
    "auc_ci"}, …]}``, curves by saved AUC, best first. Scores are oriented higher = memorized by each detector's
    saved direction; a detector whose run was not ``ok`` is left out."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json")
    direction = {k: v.get("higher_is_memorized", True) for k, v in summary["provenance"]["detectors"].items()}
    saved = {(r["detector"], int(r["n_gen"])): r for r in summary["rows"]
             if r["label"] == label and r.get("status", "ok") == "ok"}
    largest = {}
    for det, n in saved:
        largest[det] = max(n, largest.get(det, n))
    per: dict[str, tuple[list, list]] = {d: ([], []) for d in largest}
    for r in _read_scores(folder):
        y = r.get(f"label_{label}", "")
        if r["detector"] in per and int(r["n_gen"]) == largest[r["detector"]] and y in ("0", "1") \
                and r.get("split", split) == split:
            per[r["detector"]][0].append(float(r["score"]))
            per[r["detector"]][1].append(int(y))
    curves, n_pos, n_neg = [], 0, 0
    for det, (s, y) in per.items():
        s = np.asarray(s) * (1.0 if direction.get(det, True) else -1.0)
        if not s.size or not np.isfinite(s).all() or len(set(y)) < 2:
            continue
        fpr, tpr = roc_points(s, y)
        row = saved[det, largest[det]]
        curves.append({"detector": det, "n_gen": largest[det], "fpr": fpr.tolist(), "tpr": tpr.tolist(),
                       "auc": row["auc"], "auc_ci": row.get("auc_ci")})
        n_pos, n_neg = int(sum(y)), len(y) - int(sum(y))
    curves.sort(key=lambda c: -c["auc"])
    return {"label": label, "split": split, "n_pos": n_pos, "n_neg": n_neg, "curves": curves}


def plot_roc(curves: dict, ax=None):
    """ROC curves of saved detector scores (:func:`roc_curves`): left the whole curve, right the low-FPR end on a
    log axis (down to one false positive), the legend ordered by AUC with its saved 95 % CI. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axs = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"wspace": 0.25})
    else:
        axs = list(np.atleast_1d(ax))
        fig = axs[0].figure
    cs = curves["curves"]
    cmap = plt.cm.tab10 if len(cs) <= 10 else plt.cm.tab20
    for i, c in enumerate(cs):
        ci = c.get("auc_ci")
        text = f"{c['detector']} (n={c['n_gen']}): AUC {c['auc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        style = {"color": cmap(i % cmap.N), "ls": STYLES[(i // cmap.N) % len(STYLES)] if len(cs) <= 10
                 else STYLES[i % 2], "lw": 1.3}
        for a in axs:
            a.plot(c["fpr"], c["tpr"], label=text if a is axs[0] else None, **style)
    axs[0].plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="chance")
    axs[0].set(xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    if len(axs) > 1:
        lo = min(1.0 / max(curves["n_neg"], 1), 0.01)  # down to one false positive, at least to 1 %
        axs[1].set_xscale("log")
        axs[1].axvline(0.01, color="0.6", lw=0.8, ls=":")
        axs[1].set(xlim=(lo, 1), ylim=(0, 1.01), title="low false-positive end (log axis; dotted: 1 % FPR)")
    for a in axs:
        a.set_xlabel(f"false-positive rate ({curves['n_neg']} negatives)")
        a.set_ylabel(f"true-positive rate ({curves['n_pos']} positives)")
        a.grid(alpha=0.3)
    fig.suptitle(f"Detectors on the {curves['split']} split, {curves['label']} labels", y=1.0)
    axs[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3 if len(cs) > 6 else 2,
                  frameon=False)
    return fig
