"""Figures of the theory lab, rendered from saved ``summary.json`` / ``<kind>.safetensors`` only (plots never compute).

Each ``plot_<thing>(summary, ax=None) -> Axes`` draws one panel; :func:`render_figures` writes a kind's PNGs.
matplotlib is imported inside the functions (``pip install matplotlib`` if it is missing) and only its
object-oriented ``Figure`` is used, so no global pyplot state is touched.
"""

from __future__ import annotations

from pathlib import Path

from diffmem.io import read_arrays, read_json

__all__ = ["plot_loss_gap", "plot_collapse", "plot_lipschitz", "plot_sweep_panel", "plot_teaser", "render_figures"]

T_LABEL = "t (OU time, ᾱ_t = e^{−t})"  # the theory lab's time axis (Ye et al. 2025)


def _figure(ncols: int = 1, size=(5.0, 3.6)):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("theory figures need matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _ax(ax):
    return ax if ax is not None else _figure()[1][0]


def plot_loss_gap(summary: dict, ax=None):
    """Fig. 1: Loss-Gap_t vs t (log-log), Monte Carlo per n with error bars, and the small-t closed form."""
    ax = _ax(ax)
    t = summary["t"]
    for n, gap in summary["gap_mc"].items():
        ax.errorbar(t, [max(g, 1e-6) for g in gap], yerr=summary["gap_se"][n], marker="o", ms=3, label=f"n = {n}")
    ax.plot(t, summary["gap_closed_form"], "k--", label="closed form (small t)")
    ax.set(xscale="log", yscale="log", xlabel=T_LABEL, ylabel="loss gap = Fisher(P̂_t, P_t)",
           title=f"Prop. 4.1, d = {summary['dim']}")
    ax.legend(fontsize=8)
    return ax


def plot_collapse(summary: dict, ax=None):
    """Mean max posterior weight of the empirical law vs t, per (d, n); 0.5 marks the collapse time."""
    ax = _ax(ax)
    col = summary["collapse"]
    for row in col["rows"]:
        ax.plot(col["t"], row["curve"], label=f"d={row['dim']}, n={row['n']}")
    ax.axhline(col["level"], color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel=T_LABEL, ylabel="E max_i w_i(X_t)", title="collapse of the empirical posterior")
    ax.legend(fontsize=7)
    return ax


def plot_lipschitz(summary: dict, ax=None):
    """Lemma C.1: lower / upper bounds and the measured sup of ‖∇²log p̂_t‖₂, with the true mixture's."""
    ax = _ax(ax)
    rows = summary["lipschitz"]["rows"]
    t = [r["t"] for r in rows]
    for key, style in (("upper", "k--"), ("measured", "o-"), ("lower", "k:"), ("measured_true_mixture", "s-")):
        ax.plot(t, [max(r[key], 1e-3) for r in rows], style, ms=3, label=key.replace("_", " "))
    ax.set(xscale="log", yscale="log", xlabel=T_LABEL, ylabel="Lipschitz constant", title="empirical vs true score")
    ax.legend(fontsize=8)
    return ax


def plot_sweep_panel(summary: dict, panel: str, ax=None):
    """One panel of Fig. 3: memorization ratio vs params / n / width / weight decay (loglik dashed, right axis)."""
    ax = _ax(ax)
    rows = summary["panels"]["size" if panel == "width" else panel]
    spec = {"size": ("n", "params", "parameters", True), "n": ("dim", "n", "n (training points)", True),
            "width": ("n", "width", "width", True), "decay": ("n", "weight_decay", "weight decay", False)}[panel]
    by, x, label, logx = spec
    twin = ax.twinx() if panel in ("width", "decay") else None
    for key in sorted({r[by] for r in rows}):
        pts = sorted((r[x], r["memorization_ratio"], r["loglik_mean"]) for r in rows if r[by] == key)
        xs = [p[0] for p in pts]
        line, = ax.plot(xs, [p[1] for p in pts], "o-", label=f"{by}={key}")
        if twin is not None:
            twin.plot(xs, [p[2] for p in pts], "s--", color=line.get_color())
    ax.set_xscale("log" if logx else "symlog", **({} if logx else {"linthresh": 1e-2}))
    ticks = sorted({r[x] for r in rows})
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set(xlabel=label, ylabel="memorization ratio", ylim=(-0.02, 1.02), title=f"sweep: {panel}")
    if twin is not None:
        if min(r["loglik_mean"] for r in rows) < -1000:  # an under-fit net's diverging samples stay on the axis
            twin.set_yscale("symlog", linthresh=100)
        twin.set_ylabel("mean log-likelihood (dashed)")
    ax.legend(fontsize=7)
    return ax


def plot_teaser(summary: dict, arrays: dict, axes=None):
    """Fig. 2: 2-D samples of each model, copies (1/3 rule) in red, training points as black dots."""
    rows = summary["rows"]
    if axes is None:
        axes = _figure(len(rows), size=(3.0, 3.0))[1]
    train = arrays["train"].numpy()
    for ax, row in zip(axes, rows, strict=True):
        x, copy = arrays[f"samples_{row['name']}"].numpy(), arrays[f"copy_{row['name']}"].numpy().astype(bool)
        ax.scatter(x[~copy, 0], x[~copy, 1], s=4, c="tab:blue", alpha=0.6)
        ax.scatter(x[copy, 0], x[copy, 1], s=6, c="tab:red")
        ax.scatter(train[:, 0], train[:, 1], s=3, c="k", marker=".")
        size = "" if row["params"] is None else f", {row['params']} params"
        ax.set(title=f"{row['name']}{size}\nmem {row['memorization_ratio']:.2f}", xlim=(-7, 7), ylim=(-7, 7),
               aspect="equal")
        ax.title.set_fontsize(8)
    return axes


def render_figures(kind: str, out: str | Path) -> list[Path]:
    """Write the PNGs of one experiment from ``out/summary.json`` (and arrays); returns their paths."""
    out = Path(out)
    jobs = {"loss_gap": [("loss_gap.png", [plot_loss_gap])],
            "scores": [("scores.png", [plot_collapse, plot_lipschitz])],
            "sweep": [("sweep.png", [lambda s, ax, p=p: plot_sweep_panel(s, p, ax)
                                     for p in ("size", "n", "width", "decay")])]}
    if kind not in (*jobs, "teaser"):
        raise ValueError(f"unknown figure kind {kind!r}; expected one of {sorted(jobs) + ['teaser']}")
    summary, paths = read_json(out / "summary.json"), []
    if kind == "teaser":
        arrays = read_arrays(out / "teaser.safetensors")
        fig, axes = _figure(len(summary["rows"]), size=(3.0, 3.0))
        plot_teaser(summary, {k.removeprefix("arrays."): v for k, v in arrays.items()}, axes)
        paths.append(out / "teaser.png")
        fig.savefig(paths[-1], dpi=110)
        return paths
    for name, funcs in jobs[kind]:
        fig, axes = _figure(len(funcs))
        for f, ax in zip(funcs, axes, strict=True):
            f(summary, ax)
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=110)
    return paths
