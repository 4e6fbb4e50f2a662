"""Kim, Kim & Lee (2025)'s seven formal results on a subject: where each premise and conclusion holds, by rung.

One run samples every prompt with CFG recording both branches, computes :class:`~diffmem.analyses.kim_theory.
TheoryTrace` and Theorem 1's :class:`~diffmem.analyses.kim_theory.LossRecovery` against the exact training law, and
reduces them to one row per prompt (:class:`TheoryPrompt`) and the fraction of rows where each result's premise and
conclusion hold by group (kind / caption regime / duplication rung m), next to the authors' Stable Diffusion numbers.

What "holds" means for each result (ρ the RMS recovery radius, ``rho``):
* Thm 1, per prompt: premise A_c²/ρ² + δ_TV < 1 (the bound says something); conclusion: the share of seeds with
  e_T/√d > ρ is at most that bound.
* Lemma 2, per seed at T: premise ‖x̄_K − μ‖/√d ≤ ρ (the exact law is already at its mean); conclusion
  ‖m_u − μ‖/√d ≤ ρ.
* Cor. 3, per seed at T: premise e_T(c)/√d ≤ ρ and ‖m_u − μ‖/√d ≤ ρ; conclusion |ĝ_T/g − 1| ≤ ``ghat_tol``.
* Lemma 4, per transition: premise the step is affine (no clip acted); conclusion residual ≤ round-off.
* Lemma 6, per transition: premise x* is an atom of the law; conclusion ‖Δ_t‖ ≤ e_par + R(1 − p_t).
* Prop. 5, per non-terminal transition: premise M > 0 and resolved (M larger than its quadrature error, H above
  round-off and the posterior not saturated on x*); conclusion H > 0; a violation is a resolved M > 0 with H ≤ 0.
* Thm 7, per seed: premise clean final update (ᾱ_final = 1) and x* an atom; conclusion E_end ≤ B_ref.

Beside the seven results, the authors' proximity analysis, prompt-selection rule and forward-corruption bands
(:mod:`diffmem.analyses.kim_selection`): per prompt Spearman ρ(‖x_0 − x*‖, similarity), the GMM rule's kept/dropped
prompts against the planted ground truth, and how many intermediate states the generated and forward-corrupted
distance bands share. The selection runs on the evaluation seeds (the authors use a disjoint reference block).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from diffmem.analyses.finite_law import FiniteLaw, finite_law
from diffmem.analyses.kim_selection import (
    COPY_SIMILARITY,
    band_overlap,
    copy_similarity,
    select_prompts,
    similarity_name,
    spearman,
    trajectory_distances,
)
from diffmem.analyses.kim_theory import QUAD_NODES, lemma2_curve, loss_recovery, theory_trace
from diffmem.io import read_arrays, resumable_unit, strict_json, write_arrays
from diffmem.results import Provenance, Record, Result
from diffmem.sampling.guidance import Constant
from diffmem.sampling.solvers import resolve_solver
from diffmem.sampling.trajectory import Recorder, Trajectory
from diffmem.schedules import DiscreteSchedule, snr
from diffmem.subject import Prompt, Subject

__all__ = ["KimTheoryConfig", "TheoryPrompt", "KimTheorySummary", "KimTheoryResult", "run_kim_theory",
           "AUTHORS_SD", "RESULTS", "TRACE_ARRAYS", "END_ARRAYS", "SELECTION_ARRAYS"]

# the authors' measured outcome on Stable Diffusion (837 prompts × 20 seeds, four model/sampler pairs)
AUTHORS_SD = {"prop5_condition_met": "0 / 820,260", "prop5_gain_positive": 0.504, "thm7_clean_endpoints": 0}
RESULTS = ("thm1", "lemma2", "cor3", "lemma4", "lemma6", "prop5", "thm7")
TRACE_ARRAYS = ("e_c", "log_p", "delta", "bound_code", "lemma4_residual", "lemma4_residual_solver", "margin",
                "gain", "dist_model", "dist_exact", "ghat", "ghat_resid")  # [P, S, B] kept for the figures
END_ARRAYS = ("E_end", "B_ref", "B_paper", "delta_sched", "E_end_unclean", "delta_sched_unclean", "radius")  # [P, B]
# proximity l and similarity s [P, B], the selection's low assignments [P, B], the bands' distances [P, S + 1, B]
SELECTION_ARRAYS = ("prox_l", "prox_s", "sel_low", "d_gen", "d_fwd")


@dataclass(frozen=True)
class KimTheoryConfig:
    """Settings: seeds 0…n_seeds−1 per prompt, CFG weight, forward draws of Theorem 1, the RMS recovery radius ρ,
    the tolerance of ĝ_T/g, Gauss–Legendre nodes, prompts per sampling batch, whether Theorem 7 also replays
    the last step onto the schedule's first ᾱ (a final update that is not clean, like SD's DDIM), and whether to
    sample with plain DDIM (η = 0, no clip of x̂₀: the affine update Lemma 4 assumes) instead of the subject's own."""

    n_seeds: int = 8
    guidance: float = 7.5
    draws: int = 64
    rho: float = 0.1
    ghat_tol: float = 0.1
    nodes: int = QUAD_NODES
    batch_prompts: int = 16
    unclean: bool = True
    plain_ddim: bool = False

    def __post_init__(self):
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 1:
            raise ValueError(f"n_seeds must be an int >= 1, got {self.n_seeds!r}")
        if not self.rho > 0 or not self.ghat_tol > 0:
            raise ValueError(f"rho and ghat_tol must be > 0, got {self.rho!r} and {self.ghat_tol!r}")


@dataclass(frozen=True)
class TheoryPrompt:
    """One prompt's row: identity, Theorem 1's numbers, and for each result the fraction of its rows (seeds or
    transitions) where premise and conclusion hold (``<result>_premise``, ``<result>_holds``, over all rows)."""

    id: str
    kind: str
    group: str
    m: int | None
    atom: bool
    A_c: float
    A_u: float
    Y_c: float
    U_c: float
    tv: float
    thm1_bound: float
    thm1_frac_far: float
    ghat_T: float
    ghat_resid_T: float
    dist_model_T: float
    dist_exact_T: float
    lemma4_max_residual: float
    lemma4_max_residual_affine: float
    lemma4_max_residual_solver: float
    lemma6_violations: int
    lemma6_violations_paper: int
    prop5_transitions: int
    prop5_condition: int
    prop5_condition_paper: int
    prop5_gain_positive: int
    prop5_gain_obs_positive: int
    prop5_violations: int
    prop5_unresolved: int
    E_end: float  # medians over seeds, divided by √d
    B_ref: float
    B_paper: float
    delta_sched: float
    delta_sched_unclean: float
    thm7_cover_unclean: float  # E_end ≤ B_ref without δ_sched on the replayed unclean last step
    thm7_cover_unclean_delta: float
    thm1_premise: float = 0.0
    thm1_holds: float = 0.0
    lemma2_premise: float = 0.0
    lemma2_holds: float = 0.0
    cor3_premise: float = 0.0
    cor3_holds: float = 0.0
    lemma4_premise: float = 0.0
    lemma4_holds: float = 0.0
    lemma6_premise: float = 0.0
    lemma6_holds: float = 0.0
    prop5_premise: float = 0.0
    prop5_holds: float = 0.0
    thm7_premise: float = 0.0
    thm7_holds: float = 0.0
    planted: int | None = None  # the world's ground truth (1 planted, 0 negative, None unknown)
    prox_rho: float = math.nan  # Spearman ρ(‖x_0 − x*‖, similarity) across seeds
    sim_min: float = math.nan
    sim_max: float = math.nan
    sel_low_fraction: float = math.nan  # share of seeds in the GMM's low-similarity component
    sel_dropped: bool = False
    bands_overlap_steps: int = 0  # intermediate states (neither first nor last) where the two bands intersect


@dataclass(frozen=True)
class KimTheorySummary(Record):
    """Headline numbers (``summary.json``): the oracles' tallies, the pooled counts to set beside the authors'
    (``authors_sd``), Theorem 7's median slack (B_ref − E_end)/√d as sampled and (B_ref + δ_sched − E_end)/√d with
    the last step replayed onto ᾱ < 1, the share of endpoints where B_ref < R (tighter than the law's radius around
    x*; where p ≈ 0 the bound is ≈ (g − 1) R and says nothing), and ``by_group[group][result]`` = {"n", "premise",
    "holds", "holds_given_premise"}. Proximity: the share of prompts with ρ < 0 and the median ρ (prompts with a
    defined ρ; no pooled r), also per group. Selection: kept/dropped, ``selection["by_group"]``, against the ground
    truth (``selection["vs_planted"]``) and the GMM's component means. Bands: the number of intermediate states, the
    median overlap count over prompts, and ``bands`` = the most memorized prompt (largest min-similarity), the least
    (smallest max-similarity) and the median per group."""

    n_prompts: int
    n_seeds: int
    guidance: float
    rho: float
    lemma4_max_residual: float
    lemma4_max_residual_affine: float
    lemma4_max_residual_solver: float
    lemma4_affine_fraction: float
    lemma6_violations: int
    lemma6_violations_paper: int
    lemma6_transitions: int
    prop5_transitions: int
    prop5_condition_met: int
    prop5_condition_met_paper: int
    prop5_gain_positive_fraction: float
    prop5_gain_obs_positive_fraction: float
    prop5_violations: int
    prop5_unresolved: int
    thm7_clean_endpoints: int
    thm7_endpoints: int
    thm7_coverage: float
    thm7_coverage_unclean: float
    thm7_coverage_unclean_delta: float
    median_delta_sched_unclean: float
    thm7_median_gap: float
    thm7_median_gap_unclean: float
    thm7_informative_fraction: float
    by_group: dict
    authors_sd: dict = field(default_factory=lambda: dict(AUTHORS_SD))
    similarity: str = ""
    proximity_rho_negative_fraction: float = math.nan
    proximity_rho_median: float = math.nan
    proximity_by_group: dict = field(default_factory=dict)
    selection_kept: int = 0
    selection_dropped: int = 0
    selection: dict = field(default_factory=dict)
    bands_intermediate_steps: int = 0
    bands_overlap_steps_median: float = math.nan
    bands: dict = field(default_factory=dict)


@dataclass(frozen=True)
class KimTheoryResult(Result):
    """Rows per prompt, the summary, per-step arrays [P, S, B] and terminal arrays [P, B] (``arrays``: the
    :data:`TRACE_ARRAYS` and :data:`END_ARRAYS`, float32), the grid
    (t, ᾱ, SNR per step), Theorem 1's e_T [P, B], Lemma 2's exact curve and the provenance."""

    prompts: list[TheoryPrompt]
    summary: KimTheorySummary
    arrays: dict
    t: Tensor
    alpha_bar: Tensor
    snr: Tensor
    e_T: Tensor
    curve_snr: Tensor
    curve_dist: Tensor
    provenance: Provenance
    config: KimTheoryConfig


def _group(p) -> str:
    parts = [p.kind] + ([str(p.meta["regime"])] if p.meta.get("regime") else [])
    return "/".join(parts + ([f"m={p.meta['m']}"] if p.meta.get("m") is not None else []))


def _split(traj: Trajectory, lo: int, hi: int) -> Trajectory:
    """Rows lo…hi−1 of a batched trajectory."""
    per_step = {k: getattr(traj, k)[:, lo:hi] for k in ("w", "d_t", "x_t", "eps_c", "eps_u", "eps", "x0_hat")
                if getattr(traj, k) is not None}
    return replace(traj, x_T=traj.x_T[lo:hi], x_0=traj.x_0[lo:hi], **per_step)


def _frac(x: Tensor) -> float:
    return float(x.to(torch.float64).mean()) if x.numel() else math.nan


def _row(p, tr, lr, cfg: KimTheoryConfig, flags: dict, atom: bool, d: int) -> TheoryPrompt:
    """Reduce one prompt's trace to its row; ``flags`` are its (premise, conclusion) rows from :func:`_flags`."""
    rd = d**0.5
    live = ~torch.isnan(tr.margin)
    M, H = tr.margin[live], tr.gain[live]
    resolved = _resolved(tr, live)
    med = lambda v: float(v.median()) / rd
    aff_res = tr.lemma4_residual[tr.lemma4_affine.bool()]
    unclean = lambda v: _frac(v) if cfg.unclean else math.nan
    shares = {f"{name}_{part}": _frac(flags[name][k]) for name in RESULTS
              for k, part in enumerate(("premise", "holds"))}
    return TheoryPrompt(
        id=p.id, kind=p.kind, group=_group(p), m=p.meta.get("m"), atom=atom, A_c=lr.A_c, A_u=lr.A_u, Y_c=lr.Y_c,
        U_c=lr.U_c, tv=lr.tv, thm1_bound=_thm1_bound(lr, cfg.rho), thm1_frac_far=_frac(lr.e_T > cfg.rho),
        ghat_T=float(tr.ghat[0].mean()), ghat_resid_T=float(tr.ghat_resid[0].mean()),
        dist_model_T=float(tr.dist_model[0].median()), dist_exact_T=float(tr.dist_exact[0].median()),
        lemma4_max_residual=float(tr.lemma4_residual.max()),
        lemma4_max_residual_affine=float(aff_res.max()) if aff_res.numel() else math.nan,
        lemma4_max_residual_solver=float(tr.lemma4_residual_solver.max()),
        lemma6_violations=int((~flags["lemma6"][1]).sum()),
        lemma6_violations_paper=int((tr.delta > tr.bound_paper + tr.lemma6_tol).sum()),
        prop5_transitions=int(live.sum()), prop5_condition=int((M > 0).sum()),
        prop5_condition_paper=int((tr.margin_paper[live] > 0).sum()), prop5_gain_positive=int((H > 0).sum()),
        prop5_gain_obs_positive=int((tr.gain_obs[live] > 0).sum()),
        prop5_violations=int(((M > 0) & (H <= 0) & resolved).sum()), prop5_unresolved=int((~resolved).sum()),
        E_end=med(tr.E_end), B_ref=med(tr.B_ref), B_paper=med(tr.B_paper), delta_sched=med(tr.delta_sched),
        delta_sched_unclean=med(tr.delta_sched_unclean) if cfg.unclean else math.nan,
        thm7_cover_unclean=unclean(tr.E_end_unclean <= tr.B_ref + tr.thm7_tol),
        thm7_cover_unclean_delta=unclean(tr.E_end_unclean <= tr.B_ref + tr.delta_sched_unclean + tr.thm7_tol),
        **shares)


def _resolved(tr, live: Tensor) -> Tensor:
    """Transitions whose margin exceeds its quadrature error and whose posterior is not saturated on x*."""
    return (tr.quad_err[live] < tr.margin[live].abs()) & (tr.saturated[live] == 0)


def _thm1_bound(lr, rho: float) -> float:
    """Theorem 1's bound on P(e_T/√d > ρ): A_c²/ρ² + δ_TV, at most 1."""
    return min(1.0, lr.A_c**2 / rho**2 + lr.tv)


def _cond(prem: Tensor, ok: Tensor) -> float:
    return _frac(ok[prem]) if bool(prem.any()) else math.nan


def _by_group(rows: list[TheoryPrompt], flags: dict) -> dict:
    """Per group and result: rows, premise share, conclusion share, conclusion share where the premise held."""
    out: dict[str, dict] = {}
    for grp in dict.fromkeys(r.group for r in rows):
        idx = [i for i, r in enumerate(rows) if r.group == grp]
        out[grp] = {}
        for name in RESULTS:
            prem = torch.cat([flags[name][i][0].flatten() for i in idx])
            ok = torch.cat([flags[name][i][1].flatten() for i in idx])
            out[grp][name] = {"n": int(prem.numel()), "premise": _frac(prem), "holds": _frac(ok),
                              "holds_given_premise": _cond(prem, ok)}
    return out


def _flags(tr, lr, cfg: KimTheoryConfig, clean: bool, atom: bool, d: int) -> dict:
    """(premise, conclusion) boolean rows of every result for one prompt (the same definitions as :func:`_row`)."""
    rho, rd = cfg.rho, d**0.5
    live = ~torch.isnan(tr.margin)
    resolved = _resolved(tr, live)
    bound1 = _thm1_bound(lr, rho)
    l2_ok = tr.dist_model[0] <= rho
    B = tr.E_end.numel()
    return {
        "thm1": (torch.tensor([lr.A_c**2 / rho**2 + lr.tv < 1]), torch.tensor([_frac(lr.e_T > rho) <= bound1])),
        "lemma2": (tr.dist_exact[0] <= rho, l2_ok),
        "cor3": ((tr.e_c[0] / rd <= rho) & l2_ok, (tr.ghat[0] / cfg.guidance - 1).abs() <= cfg.ghat_tol),
        "lemma4": (tr.lemma4_affine.bool(), tr.lemma4_residual <= tr.lemma4_tol),
        "lemma6": (torch.full(tr.delta.shape, atom), tr.delta <= tr.bound_code + tr.lemma6_tol),
        "prop5": ((tr.margin[live] > 0) & resolved, tr.gain[live] > 0),
        "thm7": (torch.full((B,), clean and atom), tr.E_end <= tr.B_ref + tr.thm7_tol),
    }


def _unclean_alpha_bar(subject: Subject) -> float | None:
    """The final ᾱ of a DDIM without a clean final update (diffusers' set_alpha_to_one=False): the schedule's first."""
    schedule = subject.spec.schedule
    return float(schedule.alphas_cumprod[0]) if isinstance(schedule, DiscreteSchedule) else None


def run_kim_theory(subject: Subject, cfg: KimTheoryConfig = KimTheoryConfig(), *, law: FiniteLaw | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   planted: Callable[[Prompt], int | None] | None = None, units: str | Path | None = None,
                   tally: dict | None = None) -> KimTheoryResult:
    """Test the seven results on every prompt of ``subject`` that has a paired training sample; ``planted`` gives
    a prompt's ground truth (1 planted, 0 negative, None unknown) for judging the selection rule. ``units``: a
    folder where each chunk of ``cfg.batch_prompts`` prompts is saved as it finishes and found again by a rerun
    under the same settings (resume after a kill); ``tally`` counts computed, reused and recomputed chunks."""
    prompts = [p for p in subject.prompts if p.x is not None]
    if not prompts:
        raise ValueError(f"subject {subject.name!r} has no prompt with a paired training sample (x*)")
    law = law or finite_law(subject)
    if cfg.plain_ddim:
        subject = replace(subject, sampler=lambda n, own=subject.sampler: replace(own(n), solver="ddim"))
    ab_unclean = _unclean_alpha_bar(subject) if cfg.unclean else None
    tally = {"computed": 0, "reused": 0, "recomputed": 0} if tally is None else tally
    done = []
    if progress:
        progress(0, len(prompts))
    for lo in range(0, len(prompts), cfg.batch_prompts):
        chunk = prompts[lo:lo + cfg.batch_prompts]
        compute = partial(_chunk, subject, chunk, cfg, law, ab_unclean, planted)
        if units is None:
            done.append(_from_json(compute()))
        else:
            done.append(_resumed(Path(units) / f"chunk-{lo // cfg.batch_prompts:05d}",
                                 _unit_settings(subject, chunk, cfg, law, ab_unclean, planted), compute, tally))
        if progress:
            progress(min(lo + len(chunk), len(prompts)), len(prompts))
    return _merge(subject, prompts, cfg, law, ab_unclean, done)


def _unit_settings(subject: Subject, chunk: list[Prompt], cfg: KimTheoryConfig, law: FiniteLaw,
                   ab_unclean: float | None, planted) -> dict:
    """Everything a chunk's unit depends on, as JSON reads it back (so a resumed run compares equal)."""
    solver = subject.spec.solver
    fingerprint = hashlib.sha256(law.atoms.numpy().tobytes() + law.masses.numpy().tobytes()).hexdigest()
    return json.loads(strict_json({
        "subject": subject.name, "info": {k: str(v) for k, v in (subject.info or {}).items()}, "steps": subject.steps,
        "solver": solver if isinstance(solver, str) else getattr(solver, "__qualname__", type(solver).__name__),
        "alpha_bar": subject.spec.grid.alpha_bar.tolist(), "config": asdict(cfg),
        "prompts": [{"id": p.id, "text": p.text, "planted": planted(p) if planted else None} for p in chunk],
        "law": {"atoms": len(law.atoms), "dim": law.dim, "sha256": fingerprint}, "alpha_bar_unclean": ab_unclean}))


def _resumed(stem: Path, settings: dict, compute, tally: dict) -> dict:
    """The chunk saved at ``stem``.json/.safetensors under ``settings`` (reused), else computed and saved there:
    the tensors first, then the JSON stamp, so a unit exists once its JSON does."""
    def save():
        unit = compute()
        write_arrays(stem.with_suffix(".safetensors"), unit.pop("tensors"))
        return unit

    unit = resumable_unit(stem.with_suffix(".json"), settings, save, tally)
    return _from_json({**unit, "tensors": read_arrays(stem.with_suffix(".safetensors"))})


def _from_json(unit: dict) -> dict:
    """A chunk as its saved JSON reads back: non-finite floats restored, rows and flags rebuilt (an unsaved chunk
    goes through the same conversion, so a resumed run merges exactly what an uninterrupted one does)."""
    unit = json.loads(strict_json({k: v for k, v in unit.items() if k != "tensors"})) | {"tensors": unit["tensors"]}
    for where, value in unit.pop("nonfinite", {}).items():
        *path, key = where.split("/")[1:]
        node = unit
        for step in path:
            node = node[int(step) if isinstance(node, list) else step]
        node[int(key) if isinstance(node, list) else key] = float(value)
    x = unit["tensors"]
    n = len(unit["rows"])
    unit["rows"] = [TheoryPrompt(**r) for r in unit["rows"]]
    unit["flags"] = [{name: (x[f"flag.{i}.{name}.0"].bool(), x[f"flag.{i}.{name}.1"].bool()) for name in RESULTS}
                     for i in range(n)]
    return unit


def _chunk(subject: Subject, chunk: list[Prompt], cfg: KimTheoryConfig, law: FiniteLaw, ab_unclean: float | None,
           planted) -> dict:
    """Sample one chunk of prompts and reduce each to its row, flags and arrays: JSON fields and ``tensors``."""
    B, d, solver = cfg.n_seeds, law.dim, resolve_solver(subject.spec.solver)
    cond = subject.cond(chunk).select(torch.arange(len(chunk)).repeat_interleave(B))
    traj = subject.sample(cond, list(range(B)) * len(chunk), guidance=Constant(cfg.guidance, always_uncond=True),
                          recorder=Recorder(keep=("x_t", "eps_c", "eps_u")))
    clean = float(traj.alpha_bar_next[-1]) == 1.0
    rows, tensors, arrays = [], {}, {k: [] for k in TRACE_ARRAYS + END_ARRAYS + SELECTION_ARRAYS + ("e_T",)
                                     if k != "sel_low"}
    for i, p in enumerate(chunk):
        tp = _split(traj, i * B, (i + 1) * B)
        tr = theory_trace(tp, p.x, law, solver=solver, alpha_bar_unclean=ab_unclean, nodes=cfg.nodes)
        lr = loss_recovery(subject, p, tp, draws=cfg.draws)
        atom = law.index(p.x) >= 0
        flags = _flags(tr, lr, cfg, clean, atom, d)
        prox = _proximity(tp, p)
        rows.append(asdict(replace(_row(p, tr, lr, cfg, flags, atom, d), planted=planted(p) if planted else None,
                                   **prox.pop("row"))))
        tensors |= {f"flag.{i}.{name}.{k}": flags[name][k].bool() for name in RESULTS for k in (0, 1)}
        for k in TRACE_ARRAYS + END_ARRAYS:
            arrays[k].append(getattr(tr, k).to(torch.float32))
        for k, v in prox.items():
            arrays[k].append(v)
        arrays["e_T"].append(lr.e_T)
    tensors |= {f"arr.{k}": torch.stack(v) for k, v in arrays.items()}
    tensors |= {"t": traj.t, "alpha_bar": traj.alpha_bar}
    pv = traj.provenance
    return {"rows": rows, "clean": clean, "tensors": tensors,
            "provenance": {"model": pv.model, "solver": pv.solver, "grid": pv.grid, "guidance": pv.guidance}}


def _merge(subject: Subject, prompts: list[Prompt], cfg: KimTheoryConfig, law: FiniteLaw, ab_unclean: float | None,
           done: list[dict]) -> KimTheoryResult:
    """The result from every chunk (computed or loaded): the selection, summary, curve and provenance."""
    B, d, last = cfg.n_seeds, law.dim, done[-1]
    rows = [r for u in done for r in u["rows"]]
    flag_lists = {k: [f[k] for u in done for f in u["flags"]] for k in RESULTS}
    names = [k for k in TRACE_ARRAYS + END_ARRAYS + SELECTION_ARRAYS if k != "sel_low"]
    arrays = {k: torch.cat([u["tensors"][f"arr.{k}"] for u in done]) for k in names}
    e_T = torch.cat([u["tensors"]["arr.e_T"] for u in done])
    sel = select_prompts(arrays["prox_l"], arrays["prox_s"])
    arrays["sel_low"] = sel.low.to(torch.float32)
    rows = [replace(r, sel_low_fraction=_frac(low), sel_dropped=bool(drop)) for r, low, drop in
            zip(rows, sel.low, sel.dropped, strict=True)]
    summary = replace(_summary(rows, flag_lists, cfg, last["clean"], arrays, d),
                      **_selection_summary(rows, sel, arrays), similarity=similarity_name(prompts[0].x))
    t, alpha_bar = last["tensors"]["t"], last["tensors"]["alpha_bar"]
    curve_snr, curve_dist = lemma2_curve(law, float(snr(alpha_bar[0])))
    prov = Provenance(**last["provenance"], seeds=list(range(B)),
                      extra={"subject": subject.name, "law_atoms": len(law.atoms), "dim": d,
                             "alpha_bar_unclean": ab_unclean, "similarity": similarity_name(prompts[0].x),
                             "selection_seeds": "the evaluation seeds (no disjoint reference block)"})
    return KimTheoryResult(rows, summary, arrays, t, alpha_bar, snr(alpha_bar), e_T, curve_snr, curve_dist, prov, cfg)


def _summary(rows: list[TheoryPrompt], flags: dict, cfg: KimTheoryConfig, clean: bool, arrays: dict,
             d: int) -> KimTheorySummary:
    pool = lambda name, k: torch.cat([f[k].flatten().to(torch.float64) for f in flags[name]])
    n5 = sum(r.prop5_transitions for r in rows)
    s = lambda attr: sum(getattr(r, attr) for r in rows)
    aff = [r.lemma4_max_residual_affine for r in rows if not math.isnan(r.lemma4_max_residual_affine)]
    cover = lambda attr: sum(getattr(r, attr) for r in rows) / len(rows) if cfg.unclean else math.nan
    return KimTheorySummary(
        n_prompts=len(rows), n_seeds=cfg.n_seeds, guidance=cfg.guidance, rho=cfg.rho,
        lemma4_max_residual=max(r.lemma4_max_residual for r in rows),
        lemma4_max_residual_affine=max(aff) if aff else math.nan,
        lemma4_max_residual_solver=max(r.lemma4_max_residual_solver for r in rows),
        lemma4_affine_fraction=float(pool("lemma4", 0).mean()),
        lemma6_violations=s("lemma6_violations"), lemma6_violations_paper=s("lemma6_violations_paper"),
        lemma6_transitions=int(pool("lemma6", 1).numel()), prop5_transitions=n5,
        prop5_condition_met=s("prop5_condition"), prop5_condition_met_paper=s("prop5_condition_paper"),
        prop5_gain_positive_fraction=s("prop5_gain_positive") / n5 if n5 else math.nan,
        prop5_gain_obs_positive_fraction=s("prop5_gain_obs_positive") / n5 if n5 else math.nan,
        prop5_violations=s("prop5_violations"), prop5_unresolved=s("prop5_unresolved"),
        thm7_clean_endpoints=cfg.n_seeds * len(rows) if clean else 0, thm7_endpoints=cfg.n_seeds * len(rows),
        thm7_coverage=float(pool("thm7", 1).mean()), thm7_coverage_unclean=cover("thm7_cover_unclean"),
        thm7_coverage_unclean_delta=cover("thm7_cover_unclean_delta"),
        median_delta_sched_unclean=(float(torch.tensor([r.delta_sched_unclean for r in rows]).median())
                                    if cfg.unclean else math.nan),
        thm7_median_gap=float((arrays["B_ref"] - arrays["E_end"]).double().median()) / d**0.5,
        thm7_median_gap_unclean=float((arrays["B_ref"] + arrays["delta_sched_unclean"] - arrays["E_end_unclean"])
                                      .double().nanmedian()) / d**0.5,
        thm7_informative_fraction=float((arrays["B_ref"] < arrays["radius"]).double().mean()),
        by_group=_by_group(rows, flags))


def _proximity(traj: Trajectory, p: Prompt) -> dict:
    """One prompt's proximity l, similarity s [B], its distance bands [S + 1, B] and its row fields."""
    x0 = traj.x_0.to(torch.float64)
    dist = (x0.flatten(1) - p.x.flatten().to(torch.float64)).norm(dim=1)
    s = copy_similarity(x0, p.x)
    d_gen, d_fwd = trajectory_distances(traj, p.x)
    row = {"prox_rho": spearman(dist, s), "sim_min": float(s.min()), "sim_max": float(s.max()),
           "bands_overlap_steps": int(band_overlap(d_gen, d_fwd)[1:-1].sum())}
    f32 = lambda v: v.to(torch.float32)
    return {"prox_l": f32(dist), "prox_s": f32(s), "d_gen": f32(d_gen), "d_fwd": f32(d_fwd), "row": row}


def _rho_stats(rhos: list[float]) -> dict:
    """Prompts with a defined ρ, the share with ρ < 0 and the median ρ (None without any: strict JSON)."""
    r = torch.tensor([v for v in rhos if not math.isnan(v)], dtype=torch.float64)
    if not len(r):
        return {"n": 0, "negative_fraction": None, "median": None}
    return {"n": len(r), "negative_fraction": _frac(r < 0), "median": float(r.quantile(0.5))}


def _selection_summary(rows: list[TheoryPrompt], sel, arrays: dict) -> dict:
    """The summary fields of the proximity analysis, the selection rule and the bands."""
    groups = list(dict.fromkeys(r.group for r in rows))
    in_group = lambda g: [r for r in rows if r.group == g]
    prox = _rho_stats([r.prox_rho for r in rows])
    nan = lambda v: math.nan if v is None else v
    truth = {f"{name}_{act}": sum(1 for r in rows if r.planted == lab and r.sel_dropped == drop)
             for name, lab in (("planted", 1), ("negative", 0), ("unknown", None))
             for act, drop in (("kept", False), ("dropped", True))}
    med = lambda rs: float(torch.tensor([r.bands_overlap_steps for r in rs], dtype=torch.float64).quantile(0.5))
    pick = lambda r: {"id": r.id, "group": r.group, "sim_min": r.sim_min, "sim_max": r.sim_max,
                      "overlap_steps": r.bands_overlap_steps}
    return {
        "proximity_rho_negative_fraction": nan(prox["negative_fraction"]), "proximity_rho_median": nan(prox["median"]),
        "proximity_by_group": {g: _rho_stats([r.prox_rho for r in in_group(g)]) for g in groups},
        "selection_kept": sum(not r.sel_dropped for r in rows), "selection_dropped": sum(r.sel_dropped for r in rows),
        "selection": {"threshold": COPY_SIMILARITY, "low_seed_fraction": _frac(sel.low),
                      "low_mean": sel.means[0].tolist(), "high_mean": sel.means[1].tolist(), "vs_planted": truth,
                      "by_group": {g: {"kept": sum(not r.sel_dropped for r in in_group(g)),
                                       "dropped": sum(r.sel_dropped for r in in_group(g))} for g in groups}},
        "bands_intermediate_steps": int(arrays["d_gen"].shape[1]) - 2, "bands_overlap_steps_median": med(rows),
        "bands": {"memorized": pick(max(rows, key=lambda r: r.sim_min)),
                  "normal": pick(min(rows, key=lambda r: r.sim_max)),
                  "by_group": {g: med(in_group(g)) for g in groups}},
    }
