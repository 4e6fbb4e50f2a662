"""Figures of Kim, Kim & Lee (2025)'s revised theory (M1–M6 of their code), rendered from a saved
:class:`~diffmem.analyses.kim_theory_result.KimTheoryResult`; nothing is computed here but medians and quantiles.

Every ``plot_<thing>(result, ax=None) -> Axes`` draws on one axes; distances are divided by √d. matplotlib is
imported lazily (``plots`` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffmem.reports.kim_figures import render_figures

__all__ = ["plot_loss_recovery", "plot_unconditional_baseline", "plot_guidance_fit", "plot_displacement",
           "plot_feedback", "plot_synchronisation", "plot_terminal", "plot_proximity", "plot_selection",
           "plot_bands", "KIM_THEORY_FIGURES",
           "render_kim_theory_figures"]


def _ax(ax, size=(5.2, 4)):
    import matplotlib.pyplot as plt

    return ax if ax is not None else plt.subplots(figsize=size)[1]


def _rd(res) -> float:
    return float(res.provenance.extra["dim"]) ** 0.5


def _rungs(res) -> list:
    return [r.m if r.m is not None else 0 for r in res.prompts]


def plot_loss_recovery(res, ax=None):
    """Theorem 1: recovery error of the first clean estimate Y_c (conditional) and U_c (unconditional control)
    against A_c = sqrt(L_T(c)/(d SNR_T)), one point per prompt coloured by duplication rung m."""
    ax = _ax(ax)
    a = [r.A_c for r in res.prompts]
    sc = ax.scatter(a, [r.Y_c for r in res.prompts], c=_rungs(res), cmap="viridis", s=18, label="Y_c (c)")
    ax.scatter(a, [r.U_c for r in res.prompts], c="grey", marker="x", s=14, label="U_c (∅, control)")
    lim = [min(a), max(a)]
    ax.plot(lim, lim, "k:", lw=1, label="Y = A (forward-noised inputs)")
    ax.set(xlabel="A_c", ylabel="RMS recovery error at T", title="Thm 1: loss vs recovery")
    ax.figure.colorbar(sc, ax=ax, label="rung m (0: none)")
    ax.legend(fontsize=7)
    return ax


def _band(ax, x, v: torch.Tensor, label: str, color: str) -> None:
    """Median and 5–95 % band over prompts and seeds of v [P, S, B] against x [S]."""
    flat = v.permute(1, 0, 2).flatten(1).double()
    q = torch.nanquantile(flat, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64), dim=1)
    ax.plot(x, q[1], color=color, label=label)
    ax.fill_between(x, q[0], q[2], color=color, alpha=0.2)


def plot_unconditional_baseline(res, ax=None):
    """Lemma 2: ‖x̂₀(∅) − μ‖/√d along the trajectories against SNR, beside the exact finite-law ‖x̄_K − μ‖/√d on the
    same states and on Gaussian z (the analytic curve)."""
    ax = _ax(ax)
    snr = res.snr.double()
    _band(ax, snr, res.arrays["dist_model"], "model x̂₀(∅)", "C0")
    _band(ax, snr, res.arrays["dist_exact"], "exact x̄_K (trajectory)", "C1")
    q = torch.quantile(res.curve_dist.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64), dim=1)
    ax.plot(res.curve_snr, q[1], "k--", lw=1, label="exact x̄_K (z ~ N(0, I))")
    ax.set(xscale="log", yscale="log", xlabel="SNR_t", ylabel="distance to μ / √d", title="Lemma 2")
    ax.legend(fontsize=7)
    return ax


def plot_guidance_fit(res, ax=None):
    """Corollary 3: the centred guidance fit ĝ_t = ⟨m_g − μ, x* − μ⟩/‖x* − μ‖² along the trajectory against SNR,
    median per rung, with the prediction ĝ_T → g."""
    import matplotlib.pyplot as plt

    ax = _ax(ax)
    snr, ghat, rungs = res.snr.double(), res.arrays["ghat"].double(), _rungs(res)
    cmap = plt.get_cmap("viridis")
    levels = sorted(set(rungs))
    for i, m in enumerate(levels):
        sel = [k for k, r in enumerate(rungs) if r == m]
        med = ghat[sel].permute(1, 0, 2).flatten(1).median(1).values
        ax.plot(snr, med, color=cmap(i / max(1, len(levels) - 1)), lw=1, label=f"m={m}" if m else "no rung")
    ax.axhline(res.config.guidance, color="k", ls=":", lw=1, label="g")
    ax.set(xscale="log", xlabel="SNR_t", ylabel="ĝ_t (median)", title="Cor. 3: centred guidance fit")
    ax.legend(fontsize=6, ncol=2)
    return ax


def plot_displacement(res, ax=None):
    """Lemma 4: the largest residual ‖x_{t−1} − A_t x_t − κ_t m_g‖ per step (over prompts and seeds), with the
    guided estimate as the theory writes it and with the solver's own (clipped) estimate."""
    ax = _ax(ax)
    steps = torch.arange(res.arrays["lemma4_residual"].shape[1])
    for key, label in (("lemma4_residual", "with m_g"), ("lemma4_residual_solver", "with the solver's x̂₀")):
        v = res.arrays[key].double().amax(dim=(0, 2)).clamp_min(1e-18)
        ax.plot(steps, v, marker=".", label=label)
    ax.set(yscale="log", xlabel="step", ylabel="max residual", title="Lemma 4: one-step displacement")
    ax.legend(fontsize=7)
    return ax


def plot_feedback(res, ax=None):
    """Proposition 5: margin M/√d against the measured posterior gain H, every non-terminal transition."""
    ax = _ax(ax)
    M, H = res.arrays["margin"].double().flatten(), res.arrays["gain"].double().flatten()
    ok = ~(torch.isnan(M) | torch.isnan(H))
    ax.scatter(M[ok] / _rd(res), H[ok], s=3, alpha=0.4)
    ax.axvline(0, color="k", lw=0.8), ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set(xlabel="M / √d", ylabel="H = Δ log p(x*)", title="Prop. 5")
    return ax


def plot_synchronisation(res, ax=None):
    """Lemma 6: ‖Δ_t‖/√d against the bound (e_par + R(1 − p_t))/√d; points above the diagonal would violate it."""
    ax = _ax(ax)
    D, S = res.arrays["delta"].double().flatten() / _rd(res), res.arrays["bound_code"].double().flatten() / _rd(res)
    ax.scatter(S, D, s=3, alpha=0.4)
    hi = float(torch.maximum(D.max(), S.max()))
    ax.plot([1e-6, hi], [1e-6, hi], "k:", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="bound / √d", ylabel="‖Δ_t‖ / √d", title="Lemma 6")
    return ax


def plot_terminal(res, ax=None):
    """Theorem 7: CDFs over endpoints of E_end, B_ref (clean final update) and, for the last step replayed onto
    ᾱ < 1, its E_end and B_ref + δ_sched."""
    ax = _ax(ax)
    a, rd = res.arrays, _rd(res)
    curves = {"E_end (ᾱ_final = 1)": a["E_end"], "B_ref": a["B_ref"], "E_end (ᾱ_final < 1)": a["E_end_unclean"],
              "B_ref + δ_sched (ᾱ_final < 1)": a["B_ref"] + a["delta_sched_unclean"]}
    for label, v in curves.items():
        v = v.double().flatten()
        v = v[~torch.isnan(v)].sort().values / rd
        if len(v):
            ax.step(v.clamp_min(1e-9), torch.arange(1, len(v) + 1) / len(v), where="post", label=label)
    ax.set(xscale="log", xlabel="distance to x* / √d", ylabel="CDF over endpoints", title="Thm 7")
    ax.legend(fontsize=7)
    return ax


def plot_proximity(res, ax=None):
    """Proximity: per-prompt Spearman ρ(‖x_0 − x*‖, similarity) across seeds against the duplication rung m, with
    the median (a memorizing prompt has ρ < 0: closer terminals are better copies)."""
    ax = _ax(ax)
    rho = [r.prox_rho for r in res.prompts]
    ax.scatter(_rungs(res), rho, s=14, alpha=0.7)
    ax.axhline(0, color="k", lw=0.8)
    med = res.summary.proximity_rho_median
    if med == med:  # not NaN
        ax.axhline(med, color="C1", ls="--", lw=1, label=f"median ρ = {med:.2f}")
        ax.legend(fontsize=7)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(-0.5, 1.5 * max(_rungs(res) + [1]))
    ax.set(xlabel="rung m (0: none)", ylabel="Spearman ρ(l, s)", ylim=(-1.05, 1.05), title="Proximity")
    return ax


def plot_selection(res, ax=None):
    """Selection: every (prompt, seed) at (‖x_0 − x*‖/√d, similarity), coloured by the GMM component; seeds of
    dropped prompts marked ×; the dashed line is the keep threshold 0.75."""
    ax = _ax(ax)
    a = res.arrays
    dist, s, low = a["prox_l"].double() / _rd(res), a["prox_s"].double(), a["sel_low"].bool()
    drop = torch.tensor([r.sel_dropped for r in res.prompts])[:, None].expand_as(low)
    for mask, label, color in ((~low, "high component", "C0"), (low, "low component", "C3")):
        ax.scatter(dist[mask & ~drop], s[mask & ~drop], s=8, alpha=0.5, color=color, label=label)
        ax.scatter(dist[mask & drop], s[mask & drop], s=16, marker="x", color=color)
    ax.axhline(res.summary.selection.get("threshold", 0.75), color="k", ls="--", lw=1)
    ax.set(xlabel="‖x_0 − x*‖ / √d", ylabel="similarity to x*",
           title=f"Selection: {res.summary.selection_dropped} of {len(res.prompts)} dropped (×)")
    ax.legend(fontsize=7)
    return ax


def plot_bands(res, ax=None):
    """Bands: min–max over seeds of d_gen(k) = ‖z_k − x*‖ and d_fwd(k) = ‖(α_k − 1)x* + σ_k x_T‖ (divided by √d)
    along the trajectory, for the most memorized prompt (largest min-similarity) and the least (smallest max)."""
    ax = _ax(ax)
    ids = [r.id for r in res.prompts]
    rd = _rd(res)
    for tag, style in (("memorized", "-"), ("normal", ":")):
        pick = res.summary.bands.get(tag)
        if not pick:
            continue
        i = ids.index(pick["id"])
        for key, color in (("d_gen", "C0"), ("d_fwd", "C1")):
            v = res.arrays[key][i].double() / rd
            k = torch.arange(len(v))
            ax.fill_between(k, v.amin(1), v.amax(1), color=color, alpha=0.25 if tag == "memorized" else 0.1)
            ax.plot(k, v.median(1).values, color=color, ls=style,
                    label=f"{key} {tag} ({pick['id']}, overlap {pick['overlap_steps']})")
    ax.set(xlabel="state k (0: x_T, last: x_0)", ylabel="distance to x* / √d", title="Forward corruption vs generated")
    ax.legend(fontsize=6)
    return ax


KIM_THEORY_FIGURES = {"M1_loss_recovery": plot_loss_recovery, "M2_unconditional": plot_unconditional_baseline,
                      "M3_guidance_fit": plot_guidance_fit, "M4_feedback": plot_feedback,
                      "M5_synchronisation": plot_synchronisation, "M6_terminal": plot_terminal,
                      "M7_displacement": plot_displacement, "M8_proximity": plot_proximity,
                      "M9_selection": plot_selection, "M10_bands": plot_bands}


def render_kim_theory_figures(res, out: str | Path, *, fmt: str = "png", dpi: int = 110) -> list[Path]:
    """Write every figure of :data:`KIM_THEORY_FIGURES` as ``fmt`` into ``out``; returns their paths."""
    return render_figures(KIM_THEORY_FIGURES, res, out, fmt=fmt, dpi=dpi)

