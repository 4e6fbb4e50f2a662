"""Figures F1–F6 of the Kim et al. (2025) study, rendered from a saved :class:`~diffmem.analyses.kim.KimResult`.

Nothing is computed here beyond group means of saved arrays; matplotlib is imported lazily (``plots`` extra).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from diffmem.analyses.kim_summary import PAPER_PEARSON, prompt_severities
from diffmem.io import atomic_write_bytes

__all__ = ["render_kim_figures", "plot_d_vs_severity"]


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


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def render_kim_figures(res, out: str | Path) -> list[Path]:
    """Write F1–F6 as PNG files into ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, groups, paths = Path(out), _groups(res), []
    steps = range(len(res.alpha_bar))
    primary = res.summary.primary_severity
    g_idx = int(torch.argmin((res.sweep - res.config.guidance).abs()))

    fig, ax = plt.subplots(figsize=(6, 4))  # F1: loss vs t
    for (name, group), style in zip(groups.items(), ("-", "--"), strict=True):
        if group:
            ax.plot(res.t, _mean(group, lambda p: p.loss_cond), "C0" + style, label=f"conditional, {name}")
            ax.plot(res.t, _mean(group, lambda p: p.loss_guided[g_idx]), "C3" + style,
                    label=f"guided g={float(res.sweep[g_idx]):g}, {name}")
    ax.set(xlabel="timestep t", ylabel="loss ‖ε − ε̂‖²", yscale="log", title="F1 guided training loss")
    ax.invert_xaxis(), _legend(ax, fontsize=7)
    paths.append(_save(fig, out / "F1_loss.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)  # F2: cosines
    for ax, (name, group) in zip(axes, groups.items(), strict=True):
        for key in (group[0].cos if group else {}):
            ax.plot(steps, _mean(group, lambda p, k=key: p.cos[k]), label=key.removeprefix("cos_"))
        ax.set(xlabel="step k", title=f"F2 noise content, {name}", ylabel="signed cosine")
        ax.axhline(0, color="k", lw=0.5), _legend(ax, fontsize=7)
    paths.append(_save(fig, out / "F2_cosines.png"))

    fig, ax = plt.subplots(figsize=(6, 4))  # F3: dispersion
    for (name, group), style in zip(groups.items(), ("-", "--"), strict=True):
        if group:
            ax.plot(_mean(group, lambda p: p.V_ratio_x_t), "C0" + style, label=f"x_t, {name}")
            ax.plot(_mean(group, lambda p: p.V_ratio_x0_hat), "C1" + style, label=f"x0_hat, {name}")
    ax.set(xlabel="step k", ylabel="V_k / V_0", yscale="log", title="F3 across-seed dispersion")
    _legend(ax, fontsize=7)
    paths.append(_save(fig, out / "F3_dispersion.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))  # F4: decomposition coefficients
    sev = [p.severity[primary] for p in res.prompts]
    norm = matplotlib.colors.Normalize(min(sev), max(sev))
    for ax, key, ref, label in ((axes[0], "w0", res.alpha_bar.sqrt(), "√ᾱ"),
                                (axes[1], "wT", (1 - res.alpha_bar).sqrt(), "√(1−ᾱ)")):
        for p in res.prompts:
            ax.plot(steps, getattr(p, key), color=plt.cm.viridis(norm(p.severity[primary])), lw=0.8)
        ax.plot(steps, ref, "k--", label=label)
        ax.set(xlabel="step k", ylabel=f"E[{key}]", title=f"F4 {key} (colour: {primary})"), _legend(ax)
    paths.append(_save(fig, out / "F4_decomposition.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))  # F5: D vs severity
    for ax, key in zip(axes, ("D1", "D1_selfref"), strict=True):
        ax.scatter([getattr(p, key) for p in res.prompts], sev, c=[p.severity["copy_rate"] for p in res.prompts],
                   cmap="coolwarm", vmin=0, vmax=1, s=18)
        ax.set(xlabel=key, ylabel=primary, title=f"F5 r = {getattr(res.summary, f'pearson_{key}'):.3f}")
    paths.append(_save(fig, out / "F5_D_vs_severity.png"))

    if res.prompts[0].D1_by_g is not None:  # F6: sweep
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for (name, group), style in zip(groups.items(), ("o-", "s--"), strict=True):
            if group:
                axes[0].plot(res.sweep, _mean(group, lambda p: p.severity_by_g[primary]), style, label=name)
                axes[1].plot(res.sweep, _mean(group, lambda p: p.D1_by_g), style, label=name)
        axes[0].set(xlabel="guidance g", ylabel=primary, title="F6 severity vs g")
        axes[1].set(xlabel="guidance g", ylabel="D1", title="F6 D1 vs g")
        _legend(axes[0]), _legend(axes[1])
        paths.append(_save(fig, out / "F6_sweep.png"))
    plt.close("all")
    return paths


def plot_d_vs_severity(res, ax=None, *, d: str = "D1", severity: str | None = None):
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
