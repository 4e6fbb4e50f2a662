"""The headline numbers of the Kim et al. (2025) study as one typed record.

:func:`summarize` turns per-prompt analyses into a :class:`KimSummary`: correlations of the decomposition
deviations D with the primary severity (Spearman and bootstrap intervals are ours) and group contrasts between
memorized prompts (copy rate ≥ 1/2 of seeds) and non-memorized ones (no copy): guided and conditional loss,
first-step noise content and overshoot, seed dispersion and, when the guidance sweep was sampled, D1 and severity
at each g.

On a graded prompt set (Carlini et al., 2023: copying rises with duplication) :func:`graded_correlations`
correlates every D — paired, self-referenced with both step pairings — with every severity, the training-data-free
seed-to-seed ones included, next to the paper's r = 0.92, and :func:`by_stratum` gives A1–A5 per ladder rung.

``to_dict`` gives the flat keys of ``summary.json`` (stable across versions, so runs stay comparable); the sweep
of the primary severity is keyed by its name (``sweep_ssim_mem`` for SSIM).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.analyses.correlation import correlate
from diffmem.results import Record, nulls_to_nan

__all__ = ["KimSummary", "summarize", "graded_correlations", "by_stratum", "stratum", "D_NAMES", "D_ALL",
           "GROUPS", "PAPER_PEARSON", "prompt_severities"]

D_NAMES = ("D1", "D2", "D1_selfref", "D2_selfref")
D_ALL = (*D_NAMES, "D1_selfref_input", "D2_selfref_input")
PAPER_PEARSON = 0.92  # Kim et al. (2025): Pearson r of the deviation score with SSCD on SD v1.4 and v2.1
GROUPS = ("mem", "nonmem", "all")
_NAN = float("nan")


@dataclass(frozen=True)
class KimSummary(Record):
    """Correlations of D with severity and memorized / non-memorized contrasts (see the module docstring).

    Example:
        >>> s = KimSummary.from_dict({"n_prompts": 3, "n_seeds": 2, "primary_severity": "ssim"})
        >>> KimSummary.from_dict(s.to_dict()).primary_severity
        'ssim'
    """

    n_prompts: int
    n_seeds: int
    primary_severity: str
    pearson_D1: float = _NAN
    spearman_D1: float = _NAN
    pearson_D1_ci: tuple[float, float] = (_NAN, _NAN)
    spearman_D1_ci: tuple[float, float] = (_NAN, _NAN)
    pearson_D2: float = _NAN
    spearman_D2: float = _NAN
    pearson_D2_ci: tuple[float, float] = (_NAN, _NAN)
    spearman_D2_ci: tuple[float, float] = (_NAN, _NAN)
    pearson_D1_selfref: float = _NAN
    spearman_D1_selfref: float = _NAN
    pearson_D1_selfref_ci: tuple[float, float] = (_NAN, _NAN)
    spearman_D1_selfref_ci: tuple[float, float] = (_NAN, _NAN)
    pearson_D2_selfref: float = _NAN
    spearman_D2_selfref: float = _NAN
    pearson_D2_selfref_ci: tuple[float, float] = (_NAN, _NAN)
    spearman_D2_selfref_ci: tuple[float, float] = (_NAN, _NAN)
    correlations_by_severity: dict = dataclasses.field(default_factory=dict)  # metric -> {D name: Pearson r}
    n_memorized: int = 0
    n_nonmemorized: int = 0
    loss_guided_mem: float = _NAN
    loss_guided_nonmem: float = _NAN
    loss_cond_mem: float = _NAN
    loss_cond_nonmem: float = _NAN
    loss_ratio_guided_mem_vs_nonmem: float = _NAN
    loss_inflation_mem: float = _NAN
    loss_inflation_nonmem: float = _NAN
    first_step_cos_eps_c_x_mem: float = _NAN
    first_step_cos_eps_c_x_nonmem: float = _NAN
    first_step_overshoot_mem: float = _NAN
    first_step_overshoot_nonmem: float = _NAN
    V_ratio_x0_hat_step5_mem: float = _NAN
    V_ratio_x0_hat_step5_nonmem: float = _NAN
    sweep_D1: dict | None = None  # group -> [G] mean D1 at each g (None when the sweep was not sampled)
    sweep_severity: dict | None = None  # group -> [G] mean primary severity
    sweep_copy_rate: dict | None = None  # group -> [G] mean copy rate
    sweep_g: list | None = None  # [G]
    correlations_graded: dict | None = None  # severity -> D name -> correlate() record (graded_correlations)
    by_stratum: list | None = None  # one row per stratum (by_stratum)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name.endswith("_ci"):
                object.__setattr__(self, f.name, tuple(float(v) for v in getattr(self, f.name)))

    def to_dict(self) -> dict:
        """The flat ``summary.json`` keys, in the order the study has always written them."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("sweep_")
               and not (f.name in _OPTIONAL and getattr(self, f.name) is None)}
        out = {k: list(v) if k.endswith("_ci") else v for k, v in out.items()}
        if self.sweep_g is not None:
            for tag in GROUPS:
                out[f"sweep_D1_{tag}"] = self.sweep_D1[tag]
                out[f"sweep_{self.primary_severity}_{tag}"] = self.sweep_severity[tag]
                out[f"sweep_copy_rate_{tag}"] = self.sweep_copy_rate[tag]
            out["sweep_g"] = self.sweep_g
        return out

    @classmethod
    def from_dict(cls, d: dict) -> KimSummary:
        """Inverse of :meth:`to_dict` (keys of other records, e.g. ``wall_seconds``, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("sweep_")}
        d = nulls_to_nan(d)  # every field is a number or a string: a null was a non-finite number
        kw = {k: v for k, v in d.items() if k in names}
        if "sweep_g" in d:
            primary = d["primary_severity"]
            kw.update(sweep_g=d["sweep_g"], sweep_D1={t: d[f"sweep_D1_{t}"] for t in GROUPS},
                      sweep_severity={t: d[f"sweep_{primary}_{t}"] for t in GROUPS},
                      sweep_copy_rate={t: d[f"sweep_copy_rate_{t}"] for t in GROUPS})
        return cls(**kw)


def summarize(prompts: Sequence, sweep: Tensor, *, guidance: float, primary: str, n_seeds: int,
              n_boot: int) -> KimSummary:
    """The headline numbers of per-prompt analyses (:class:`~diffmem.analyses.kim.PromptAnalysis`), with group
    means at the sweep weight nearest ``guidance``."""
    if primary not in prompts[0].severity:
        raise ValueError(f"unknown primary severity {primary!r}; have {sorted(prompts[0].severity)}")
    sev = [p.severity[primary] for p in prompts]
    out = {"n_prompts": len(prompts), "n_seeds": n_seeds, "primary_severity": primary}
    for name in D_NAMES:
        r = correlate([getattr(p, name) for p in prompts], sev, n_boot=n_boot)
        out[f"pearson_{name}"], out[f"spearman_{name}"] = r["pearson"], r["spearman"]
        out[f"pearson_{name}_ci"], out[f"spearman_{name}_ci"] = r["pearson_ci"], r["spearman_ci"]
    out["correlations_graded"] = graded_correlations(prompts, n_boot=n_boot)
    out["by_stratum"] = by_stratum(prompts, sweep, guidance=guidance)
    out["correlations_by_severity"] = {
        metric: {name: correlate([getattr(p, name) for p in prompts], [p.severity[metric] for p in prompts],
                                 n_boot=0 if metric != primary else n_boot)["pearson"]
                 for name in D_NAMES[:3]}
        for metric in prompts[0].severity}
    mem = [p for p in prompts if p.severity["copy_rate"] >= 0.5]
    non = [p for p in prompts if p.severity["copy_rate"] == 0]
    out["n_memorized"], out["n_nonmemorized"] = len(mem), len(non)
    out.update(_contrasts(mem, non, int(torch.argmin((sweep - guidance).abs()))))
    if prompts[0].D1_by_g is not None:  # per group: mean D1 and severity at each g of the sweep
        groups = {"mem": mem, "nonmem": non, "all": list(prompts)}
        out["sweep_D1"] = {t: _stack_mean(g, lambda p: p.D1_by_g) for t, g in groups.items()}
        out["sweep_severity"] = {t: _stack_mean(g, lambda p: p.severity_by_g[primary]) for t, g in groups.items()}
        out["sweep_copy_rate"] = {t: _stack_mean(g, lambda p: p.severity_by_g["copy_rate"])
                                  for t, g in groups.items()}
        out["sweep_g"] = sweep.tolist()
    return KimSummary(**out)


_OPTIONAL = ("correlations_graded", "by_stratum")


def prompt_severities(p) -> dict:
    """Every severity of one prompt: against the paired image, seed-to-seed, template region."""
    out = {**p.severity, **(p.seed_severity or {})}
    if p.template_copy is not None:
        out["template_copy"] = p.template_copy
    return out


def graded_correlations(prompts: Sequence, *, n_boot: int = 2000) -> dict:
    """{severity: {D name: {"pearson", "pearson_ci", "spearman", "spearman_ci", "n"}}} over the prompts that have
    both (``template_copy``: template prompts only), with ``"paper_pearson"`` = 0.92 for comparison.

    Severities where lower = memorized (``seed_l2``) correlate negatively with a D that tracks memorization."""
    names = list(dict.fromkeys(k for p in prompts for k in prompt_severities(p)))
    out = {"paper_pearson": PAPER_PEARSON}
    for metric in names:
        have = [p for p in prompts if metric in prompt_severities(p)]
        sev = [prompt_severities(p)[metric] for p in have]
        out[metric] = {name: correlate([getattr(p, name) for p in have], sev, n_boot=n_boot)
                       for name in D_ALL if all(getattr(p, name) == getattr(p, name) for p in have)}
    return out


def stratum(p) -> str:
    """A prompt's stratum: "ladder m=<m> <regime>" for a ladder prompt, else its kind."""
    meta = p.meta or {}
    return f"ladder m={meta['m']} {meta['regime']}" if p.kind == "ladder" else p.kind


def _order(key: str) -> tuple:
    """Ladder rows by regime then m, then templates, then the rest in order of appearance (a stable sort)."""
    if key.startswith("ladder"):
        m, regime = key.split()[1:]
        return (0, regime, int(m[2:]))
    return (1 if key == "template" else 2, "", 0)


def by_stratum(prompts: Sequence, sweep: Tensor, *, guidance: float) -> list[dict]:
    """A1–A5 per stratum (ladder rung and regime, template, each negative kind): means of severities, D, the
    guided loss and overshoot at the first step, noise content, seed dispersion and collapse steps, D vs g."""
    g = int(torch.argmin((sweep - guidance).abs()))
    groups: dict[str, list] = {}
    for p in prompts:
        groups.setdefault(stratum(p), []).append(p)
    rows = []
    for key in sorted(groups, key=_order):
        ps = groups[key]
        mean = lambda fn, ps=ps: float(torch.tensor([float(fn(p)) for p in ps], dtype=torch.float64).nanmean())
        sev = {k: mean(lambda p, k=k: prompt_severities(p).get(k, _NAN)) for k in prompt_severities(ps[0])}
        meta = {k: v for k, v in (ps[0].meta or {}).items() if k in ("m", "regime") and v is not None}
        row = {"stratum": key, "kind": ps[0].kind, **meta,
               "n_prompts": len(ps), **sev, **{name: mean(lambda p, n=name: getattr(p, n)) for name in D_ALL},
               "loss_guided_first": mean(lambda p: p.loss_guided[g][0]),
               "loss_cond_first": mean(lambda p: p.loss_cond[0]),
               "loss_inflation": mean(lambda p: p.loss_guided[g].mean() / p.loss_cond.mean()),
               "overshoot_first": mean(lambda p: p.k_guided[g][0]),
               "cos_eps_c_x_first": mean(lambda p: p.cos["cos_eps_c_x"][0]),
               "cos_eps_u_x_first": mean(lambda p: p.cos["cos_eps_u_x"][0]),
               "V_ratio_x_t_step5": mean(lambda p: p.V_ratio_x_t[min(5, len(p.V_ratio_x_t) - 1)]),
               "V_ratio_x0_hat_step5": mean(lambda p: p.V_ratio_x0_hat[min(5, len(p.V_ratio_x0_hat) - 1)]),
               "V_ratio_x_t_final": mean(lambda p: p.V_ratio_x_t[-1]),
               "collapsed_x_t": mean(lambda p: p.collapse_x_t is not None),
               "collapse_x_t": mean(lambda p: _NAN if p.collapse_x_t is None else p.collapse_x_t),
               "collapse_x0_hat": mean(lambda p: _NAN if p.collapse_x0_hat is None else p.collapse_x0_hat),
               "n_steps": len(ps[0].V_ratio_x_t)}
        if ps[0].D1_by_g is not None:
            row.update({f"{k}_by_g": _stack_mean(ps, lambda p, k=k: getattr(p, f"{k}_by_g")) for k in ("D1", "D2")
                        if getattr(ps[0], f"{k}_by_g") is not None})
            row.update({f"{k}_by_g": _stack_mean(ps, lambda p, k=k: p.severity_by_g[k])
                        for k in ("copy_rate", "ssim") if k in ps[0].severity_by_g})
        rows.append(row)
    return rows


def _contrasts(mem: list, non: list, g: int) -> dict:
    """Group means of the guided and conditional loss (at sweep index ``g``), first-step cosine and overshoot,
    and x̂₀ dispersion at step 5."""
    def mean(group, fn):
        return float(torch.stack([fn(p) for p in group]).double().mean()) if group else _NAN

    def both(key, fn):
        return {f"{key}_mem": mean(mem, fn), f"{key}_nonmem": mean(non, fn)}

    out = {**both("loss_guided", lambda p: p.loss_guided[g].mean()), **both("loss_cond", lambda p: p.loss_cond.mean())}
    lg_mem, lg_non = out["loss_guided_mem"], out["loss_guided_nonmem"]
    out["loss_ratio_guided_mem_vs_nonmem"] = lg_mem / lg_non if non and lg_non > 0 else _NAN
    # how much guidance inflates the loss over the conditional branch's own (Kim et al.'s claim (i))
    out["loss_inflation_mem"] = lg_mem / out["loss_cond_mem"] if mem else _NAN
    out["loss_inflation_nonmem"] = lg_non / out["loss_cond_nonmem"] if non else _NAN
    out.update(both("first_step_cos_eps_c_x", lambda p: p.cos["cos_eps_c_x"][0]))
    out.update(both("first_step_overshoot", lambda p: p.k_guided[g][0]))
    out.update(both("V_ratio_x0_hat_step5", lambda p: p.V_ratio_x0_hat[min(5, len(p.V_ratio_x0_hat) - 1)]))
    return out


def _stack_mean(group: list, fn) -> list:
    return torch.stack([fn(p) for p in group]).mean(0).tolist() if group else []
