"""Figures of the Kim et al. (2025) study, rendered from a saved :class:`~diffmem.analyses.kim.KimResult`.

One ``plot_<thing>(res, axes=None)`` per figure: it draws on the given axes (new ones when None) and returns the
figure; nothing is computed beyond group means of saved arrays. File names keep F1–F6 (the study's order); titles
say what is shown. matplotlib is imported lazily (``plots`` extra).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from diffmem.analyses.kim_summary import PAPER_PEARSON, prompt_severities
from diffmem.io import atomic_write_bytes

__all__ = ["render_kim_figures", "render_figures", "save_figure", "plot_loss", "plot_cosines", "plot_dispersion",
           "plot_decomposition", "plot_d_vs_severity", "plot_sweep",
           "plot_d_vs_severity_by_rung", "FORMATS"]

FORMATS = ("png", "svg", "pdf")
STEP = "sampler step k (0 = pure noise)"


def _groups(res):
    mem = [p for p in res.prompts if p.severity["copy_rate"] >= 0.5]
    non = [p for p in res.prompts if p.severity["copy_rate"] == 0]
    return {"memorized": mem, "non-memorized": non}


def _mean(group, fn):
    return torch.stack([fn(p) for p in group]).double().mean(0).numpy()


def _legend(ax, **kw) -> None:
    """A legend only where something is labelled (a group can be empty, e.g. no memorized prompt)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _axes(axes, n: int, width: float):
    import matplotlib.pyplot as plt

    if axes is not None:
        axes = list(axes) if n > 1 else [axes]
        return axes[0].figure, axes
    fig, ax = plt.subplots(1, n, figsize=(width, 4), squeeze=False)
    return fig, list(ax[0])


def _n(group) -> str:
    return f"n = {len(group)}"


def plot_loss(res, axes=None):
    """A1: the guided training loss exceeds the conditional one, more so for memorized prompts."""
    fig, (ax,) = _axes(axes, 1, 6)
    g_idx = int(torch.argmin((res.sweep - res.config.guidance).abs()))
    for (name, group), style in zip(_groups(res).items(), ("-", "--"), strict=True):
        if group:
            ax.plot(res.t, _mean(group, lambda p: p.loss_cond), "C0" + style,
                    label=f"conditional, {name} ({_n(group)})")
            ax.plot(res.t, _mean(group, lambda p: p.loss_guided[g_idx]), "C3" + style,
                    label=f"guided g = {float(res.sweep[g_idx]):g}, {name} ({_n(group)})")
    ax.set(xlabel="training timestep t (of 1000)", ylabel="loss E‖ε − ε̂‖² (sum over pixels)", yscale="log",
           title="Guided vs conditional denoising loss")
    ax.invert_xaxis(), _legend(ax, fontsize=7)
    return fig


def plot_cosines(res, axes=None):
    """A2: signed cosines of the noise-prediction terms with the paired image, per group."""
    fig, axs = _axes(axes, 2, 10)
    for ax, (name, group) in zip(axs, _groups(res).items(), strict=True):
        for key in (group[0].cos if group else {}):
            term, ref = key.removeprefix("cos_").rsplit("_", 1)
            ax.plot(range(len(res.alpha_bar)), _mean(group, lambda p, k=key: p.cos[k]), label=f"cos({term}, {ref})")
        ax.set(xlabel=STEP, title=f"Noise content, {name} ({_n(group)})", ylabel="signed cosine (unitless)")
        ax.axhline(0, color="k", lw=0.5), _legend(ax, fontsize=7)
    axs[1].sharey(axs[0])
    return fig


def plot_dispersion(res, axes=None):
    """A3: across-seed dispersion of x_t and x0_hat relative to the first step."""
    fig, (ax,) = _axes(axes, 1, 6)
    for (name, group), style in zip(_groups(res).items(), ("-", "--"), strict=True):
        if group:
            ax.plot(_mean(group, lambda p: p.V_ratio_x_t), "C0" + style, label=f"x_t, {name} ({_n(group)})")
            ax.plot(_mean(group, lambda p: p.V_ratio_x0_hat), "C1" + style, label=f"x0_hat, {name} ({_n(group)})")
    ax.set(xlabel=STEP, ylabel="across-seed variance V_k / V_0 (ratio)", yscale="log",
           title="Across-seed dispersion")
    _legend(ax, fontsize=7)
    return fig


def plot_decomposition(res, axes=None):
    """A4: decomposition coefficients w0 and wT per prompt, coloured by severity (colourbar), noise schedule dashed."""
    import matplotlib

    fig, axs = _axes(axes, 2, 11)
    primary = res.summary.primary_severity
    sev = [p.severity[primary] for p in res.prompts]
    norm = matplotlib.colors.Normalize(min(sev), max(sev))
    cmap = matplotlib.colormaps["viridis"]
    steps = range(len(res.alpha_bar))
    for ax, key, ref, label in ((axs[0], "w0", res.alpha_bar.sqrt(), "√ᾱ (no memorization)"),
                                (axs[1], "wT", (1 - res.alpha_bar).sqrt(), "√(1−ᾱ) (no memorization)")):
        for p in res.prompts:
            ax.plot(steps, getattr(p, key), color=cmap(norm(p.severity[primary])), lw=0.8)
        ax.plot(steps, ref, "k--", label=label)
        ax.set(xlabel=STEP, ylabel=f"E[{key}] (coefficient, unitless)",
               title=f"Coefficient {key} of the {'paired image' if key == 'w0' else 'initial noise'}")
        _legend(ax, fontsize=7)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axs)
    bar.set_label(f"severity: {primary} to the paired image")
    return fig


def plot_d_vs_severity(res, axes=None):
    """A4: schedule deviation D1 (paired reference and training-data-free) vs severity; colour = copy rate."""
    fig, axs = _axes(axes, 2, 12)
    primary = res.summary.primary_severity
    sev = [p.severity[primary] for p in res.prompts]
    for ax, key, what in zip(axs, ("D1", "D1_selfref"), ("paired image", "own x_0"), strict=True):
        sc = ax.scatter([getattr(p, key) for p in res.prompts], sev, c=[p.severity["copy_rate"] for p in res.prompts],
                        cmap="coolwarm", vmin=0, vmax=1, s=18)
        ci = getattr(res.summary, f"pearson_{key}_ci")
        ax.set(xlabel=f"{key} (deviation, vs {what}; unitless)", ylabel=f"severity ({primary})",
               title=f"Pearson r = {getattr(res.summary, f'pearson_{key}'):.2f} [{ci[0]:.2f}, {ci[1]:.2f}], "
                     f"n = {len(sev)}")
    bar = fig.colorbar(sc, ax=axs)
    bar.set_label("copy rate over seeds (fraction)")
    return fig


def plot_sweep(res, axes=None):
    """A5: severity and D1 against the guidance weight, per group."""
    fig, axs = _axes(axes, 2, 10)
    primary = res.summary.primary_severity
    for (name, group), style in zip(_groups(res).items(), ("o-", "s--"), strict=True):
        if group:
            axs[0].plot(res.sweep, _mean(group, lambda p: p.severity_by_g[primary]), style,
                        label=f"{name} ({_n(group)})")
            axs[1].plot(res.sweep, _mean(group, lambda p: p.D1_by_g), style, label=f"{name} ({_n(group)})")
    axs[0].set(xlabel="guidance weight g", ylabel=f"severity ({primary})", title="Severity vs guidance")
    axs[1].set(xlabel="guidance weight g", ylabel="D1 (unitless)", title="Schedule deviation vs guidance")
    _legend(axs[0], fontsize=7), _legend(axs[1], fontsize=7)
    return fig


FIGURES = {"F1_loss": plot_loss, "F2_cosines": plot_cosines, "F3_dispersion": plot_dispersion,
           "F4_decomposition": plot_decomposition, "F5_D_vs_severity": plot_d_vs_severity, "F6_sweep": plot_sweep}


def save_figure(fig, path: Path, fmt: str, dpi: int) -> Path:
    """``fig`` written atomically to ``path`` as ``fmt`` at ``dpi`` (tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def render_figures(figures: dict, res, out: str | Path, *, fmt: str = "png", dpi: int = 110) -> list[Path]:
    """Write ``name: plot(res)`` of ``figures`` (a plot returns a Figure or an Axes) as ``fmt`` files into ``out``;
    returns their paths."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {FORMATS}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    paths = []
    for name, plot in figures.items():
        drawn = plot(res)
        fig = drawn if isinstance(drawn, Figure) else drawn.figure
        paths.append(save_figure(fig, Path(out) / f"{name}.{fmt}", fmt, dpi))
        plt.close(fig)
    return paths


def render_kim_figures(res, out: str | Path, *, fmt: str = "png", dpi: int = 110) -> list[Path]:
    """Write F1–F6 (F6 only when the sweep was sampled) as ``fmt`` files into ``out``; returns their paths."""
    figures = {name: plot for name, plot in FIGURES.items()
               if not (name == "F6_sweep" and res.prompts[0].D1_by_g is None)}
    return render_figures(figures, res, out, fmt=fmt, dpi=dpi)


def plot_d_vs_severity_by_rung(res, ax=None, *, d: str = "D1", severity: str | None = None):
    """D vs severity per prompt of a saved graded result, coloured by ladder rung m (grey: templates and negatives),
    with Pearson r against the paper's 0.92 in the title (Kim et al., 2025, their Fig. F5 on a graded set).

    ``d``: any per-prompt D (``D1``, ``D2``, ``D1_selfref``, ``D1_selfref_input`` …); ``severity``: a paired,
    seed-to-seed or template severity (default: the study's primary one). Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    severity = severity or res.summary.primary_severity
    if ax is None:
        ax = plt.subplots(figsize=(5.5, 4))[1]
    sev = [prompt_severities(p) for p in res.prompts]
    pts = [(getattr(p, d), s[severity], p) for p, s in zip(res.prompts, sev, strict=True) if severity in s]
    if not pts:
        raise ValueError(f"no prompt of the result has severity {severity!r}; have {sorted(sev[0])}")
    ladder = [(x, y, (p.meta or {})["m"]) for x, y, p in pts if p.kind == "ladder"]
    other = [(x, y, p.kind) for x, y, p in pts if p.kind != "ladder"]
    for kind, marker in zip(dict.fromkeys(k for *_, k in other), "sD^v<>", strict=False):
        xs = [(x, y) for x, y, k in other if k == kind]
        ax.scatter(*zip(*xs, strict=True), c="0.6", marker=marker, s=16, label=kind)
    if ladder:
        ms = [m for *_, m in ladder]
        sc = ax.scatter([x for x, *_ in ladder], [y for _, y, _ in ladder], c=ms, cmap="viridis", s=18,
                        norm=LogNorm(min(ms), max(max(ms), min(ms) + 1)), label="ladder")
        ax.figure.colorbar(sc, ax=ax, label="duplicates m")
    r = (res.summary.correlations_graded or {}).get(severity, {}).get(d, {}).get("pearson", float("nan"))
    ax.set(xlabel=d, ylabel=severity, title=f"{d} vs {severity}: r = {r:.3f} (paper {PAPER_PEARSON})")
    _legend(ax, fontsize=7)
    return ax
