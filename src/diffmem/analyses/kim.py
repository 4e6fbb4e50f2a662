"""The full study of Kim, Kim & Lee (2025), *How Diffusion Models Memorize*, on any :class:`~diffmem.subject.Subject`.

For every prompt with a paired training image: sample N seeds with CFG (DDIM, g = 7.5 by default) recording
everything, then run A1 (guided loss, overshoot), A2 (noise content), A3 (seed convergence), A4 (decomposition,
D1/D2 and the training-data-free self-referenced D), measure memorization severity with several metrics, and
correlate D with severity across prompts (:mod:`diffmem.analyses.kim_summary`). Beyond the paper: several severity
metrics, Spearman and bootstrap intervals, the self-referenced D, and any model or world.

A prompt *without* a training image (a prompts-only manifest row) gets what needs no training data: the
self-referenced D, seed convergence (A3) and, with references, the share of seeds copying one of them
(:class:`SelfRefAnalysis`); the rest is skipped with the reason recorded in :attr:`KimResult.skipped`. With
``units=DIR`` each prompt is saved as it finishes and a rerun with the same settings resumes from them.

Seeds run ``batch_size`` at a time (:attr:`KimConfig.batch_size`): seed i draws x_T and the solver noise from its own
stream, so the records do not depend on the batching beyond float round-off, while the forward batch — and what is
held of the trajectories — shrinks with it: what is per seed (A2 cosines, A4 decompositions, the A5 sweep) is
reduced chunk by chunk while the chunk's fields are in memory; across seeds only x_t and x̂₀ (A3) and x_0 are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from diffmem.analyses.convergence import convergence
from diffmem.analyses.decomposition import Decomposition, decompose_trajectory, schedule_deviation
from diffmem.analyses.kim_summary import KimSummary, summarize
from diffmem.analyses.noise_content import noise_content
from diffmem.analyses.overestimation import guided_loss
from diffmem.analyses.severity import seed_severity, severity, template_copy
from diffmem.executor import SerialExecutor, pick, prompt_refs
from diffmem.results import Provenance, Result
from diffmem.sampling.guidance import Constant
from diffmem.sampling.trajectory import TENSOR_FIELDS, Recorder, Trajectory
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.subject import Prompt, Subject

__all__ = ["KimConfig", "PromptAnalysis", "SelfRefAnalysis", "KimResult", "KimSummary", "run_kim", "analyze_prompt",
           "analyze_unpaired", "summarize", "NEEDS_TRAINING_IMAGE"]

# what a prompt without a paired training image cannot have, and why
NEEDS_TRAINING_IMAGE = ("A1 guided loss, A2 noise content, D1/D2 against the training image, severity and the A5 "
                        "sweep need the prompt's training image")


@dataclass(frozen=True)
class KimConfig:
    """Settings of the study.

    Attributes:
        n_seeds: samples per prompt; seeds 0 … n_seeds − 1, the same for every prompt and every g.
        guidance: the CFG weight g of the main trajectories.
        sweep: the weights of the guided loss (A1) and, with ``sample_sweep``, of D and severity vs g (A5).
        draws: forward-noise draws per timestep of the guided loss.
        primary: the severity metric D is correlated with (``ssim``, ``l2_sim``, ``cosine`` or ``copy_rate``).
        n_boot: bootstrap resamples of the correlation intervals.
        collapse_threshold: dispersion ratio below which the seeds have collapsed (A3).
        sample_sweep: also sample every g of the sweep.
        batch_size: seeds (and A1 noise draws) per forward batch; None: all at once. It changes the records only
            by float round-off, so it is not part of the settings a resumed run must match.
    """

    n_seeds: int = 10
    guidance: float = 7.5
    sweep: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5, 10.0)
    draws: int = 32
    primary: str = "ssim"
    n_boot: int = 2000
    collapse_threshold: float = 0.1
    sample_sweep: bool = True
    batch_size: int | None = None

    def __post_init__(self):
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 2:
            raise ValueError(f"n_seeds must be an int >= 2 (dispersion needs two), got {self.n_seeds!r}")
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"batch_size must be a positive int (seeds per forward batch) or None, got {b!r}")
        object.__setattr__(self, "sweep", tuple(float(g) for g in self.sweep))


@dataclass(frozen=True)
class PromptAnalysis:
    """Per-prompt arrays (steps S, sweep G, grid timesteps T) and scalars."""

    id: str
    kind: str
    D1: float
    D2: float
    D1_selfref: float
    D2_selfref: float
    severity: dict
    w0: Tensor  # [S] seed-averaged
    wT: Tensor
    resid: Tensor  # [S] mean ‖r‖/‖z‖
    cos: dict  # name -> [S] seed-averaged signed cosines
    V_ratio_x_t: Tensor
    V_ratio_x0_hat: Tensor
    collapse_x_t: int | None
    loss_cond: Tensor  # [T]
    loss_uncond: Tensor
    loss_guided: Tensor  # [G, T]
    k_guided: Tensor  # [G, T]
    D1_by_g: Tensor | None = None  # [G] (A5; None when the sweep was not sampled)
    severity_by_g: dict | None = None  # metric -> [G]
    text: str = ""  # the prompt as a person reads it
    # the authors' variants: self-referenced D with the "input" pairing (D*_selfref above use "landed"), the
    # training-data-free seed-to-seed severity, the template-region copy rate of template prompts
    D1_selfref_input: float = float("nan")
    D2_selfref_input: float = float("nan")
    seed_severity: dict | None = None  # {"seed_l2", "seed_ssim"}
    template_copy: float | None = None  # None: not a template prompt
    collapse_x0_hat: int | None = None
    D2_by_g: Tensor | None = None  # [G]
    meta: dict | None = None  # ground truth of a graded world: m, regime, template, split


@dataclass(frozen=True)
class SelfRefAnalysis:
    """A prompt without a training image: the self-referenced D (each seed's own final sample as the image), seed
    convergence (A3) and ``copy_rate_refs``, the share of seeds whose sample copies a reference (1/3 rule; None
    without references)."""

    id: str
    kind: str
    D1_selfref: float
    D2_selfref: float
    w0_selfref: Tensor  # [S] seed-averaged
    V_ratio_x_t: Tensor
    V_ratio_x0_hat: Tensor
    collapse_x_t: int | None
    copy_rate_refs: float | None


@dataclass(frozen=True)
class KimResult(Result):
    """``prompts``: the paired prompts' full analyses; ``summary``: their correlations (None with fewer than 3
    paired prompts); ``selfref``: the prompts without a training image; ``skipped``: analysis → reason."""

    prompts: list[PromptAnalysis]
    alpha_bar: Tensor  # [S] the ᾱ each decomposed latent lives at
    t: Tensor  # [T] grid timesteps (A1)
    sweep: Tensor  # [G]
    summary: KimSummary | None
    provenance: Provenance
    config: KimConfig
    selfref: list[SelfRefAnalysis] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Unit(Result):
    """One finished prompt, saved so that a killed run resumes; ``settings`` must match to be reused."""

    settings: dict
    provenance: Provenance
    paired: PromptAnalysis | None = None
    unpaired: SelfRefAnalysis | None = None


_SEED_DIM = {"x_T": 0, "x_0": 0, "w": 1, "d_t": 1, **dict.fromkeys(TENSOR_FIELDS, 1)}  # where a trajectory's seeds are


def _chunks(cfg: KimConfig) -> list[list[int]]:
    """Seeds 0 … n_seeds − 1 in forward batches of ``cfg.batch_size`` (None: one batch)."""
    b = cfg.batch_size or cfg.n_seeds
    return [list(range(i, min(i + b, cfg.n_seeds))) for i in range(0, cfg.n_seeds, b)]


def _trajectory(subject: Subject, p: Prompt, cfg: KimConfig, g: float, record: tuple[str, ...],
                keep: tuple[str, ...] | None = None, each: Callable[[Trajectory], object] | None = None):
    """The ``n_seeds`` trajectories of ``p`` at CFG weight ``g``, sampled ``cfg.batch_size`` seeds at a time.

    Each chunk records the fields ``record``; ``each(chunk)`` reduces it while they are in memory (its results are
    returned in seed order); of the fields only ``keep`` (default: ``record``) are assembled for all seeds, in
    buffers filled chunk by chunk. Returns (trajectory of all seeds, results of ``each``)."""
    keep, chunks = record if keep is None else keep, _chunks(cfg)
    full, seen = None, []
    for seeds in chunks:
        cond = p.cond.select(torch.zeros(len(seeds), dtype=torch.long))
        tr = subject.sample(cond, seeds, guidance=Constant(g, always_uncond=True), recorder=Recorder(keep=record))
        if each is not None:
            seen.append(each(tr))
        tr = replace(tr, **{f: None for f in TENSOR_FIELDS if f not in keep})  # the chunk's others are freed
        if len(chunks) == 1:
            return tr, seen
        if full is None:
            full = replace(tr, provenance=replace(tr.provenance, seeds=list(range(cfg.n_seeds))),
                           **{f: _seed_buffer(getattr(tr, f), d, cfg.n_seeds) for f, d in _SEED_DIM.items()})
        for f, d in _SEED_DIM.items():
            if getattr(tr, f) is not None:
                getattr(full, f).narrow(d, seeds[0], len(seeds)).copy_(getattr(tr, f))
    return full, seen


def _seed_buffer(v: Tensor | None, dim: int, n: int) -> Tensor | None:
    return None if v is None else v.new_empty((*v.shape[:dim], n, *v.shape[dim + 1:]))


def _joined(parts: list[Decomposition]) -> Decomposition:
    """The decompositions of consecutive seed chunks as one (D1, D2 from the seed means, as for one batch)."""
    w0, wT, resid = (torch.cat([getattr(q, k) for q in parts], 1) for k in ("w0", "wT", "resid"))
    return Decomposition(w0, wT, resid, parts[0].alpha_bar, *schedule_deviation(w0, wT, parts[0].alpha_bar))


def _sweep(subject: Subject, p: Prompt, cfg: KimConfig, main, main_dec: Decomposition) -> dict:
    """A5: D1, D2 and every severity at each g of the sweep (the main trajectory ``main`` and its decomposition
    serve g = guidance); each other g keeps only the per-seed decomposition and final samples."""
    d, sev = [], []
    for g in cfg.sweep:
        if g == cfg.guidance:
            tr, dec = main, main_dec
        else:
            tr, parts = _trajectory(subject, p, cfg, g, ("x_t",), keep=(),
                                    each=lambda t: decompose_trajectory(t, p.x))
            dec = _joined(parts)
        d.append((dec.D1, dec.D2))
        sev.append(severity(tr.x_0, p.x, subject.references, decode=subject.decode))
    d = torch.tensor(d, dtype=torch.float64)
    return {"D1_by_g": d[:, 0], "D2_by_g": d[:, 1],
            "severity_by_g": {k: torch.tensor([s[k] for s in sev]) for k in sev[0]}}


_META = ("m", "regime", "template", "split")


def _graded(subject: Subject, p: Prompt, tr, own_in: Decomposition) -> dict:
    """The authors' variants (``own_in``: the self-referenced decomposition with the "input" pairing) and, for a
    template prompt (``meta["template_mask"]``), the template-region copy rate."""
    out = {"D1_selfref_input": own_in.D1, "D2_selfref_input": own_in.D2,
           "seed_severity": seed_severity(tr.x_0, decode=subject.decode),
           "meta": {k: p.meta[k] for k in _META if k in p.meta} or None}
    if p.meta.get("template_mask") is not None:
        out["template_copy"] = template_copy(tr.x_0, subject.references, p.meta["template_mask"], p.x)
    return out


def _per_seed(x: Tensor, t: Trajectory) -> dict:
    """What is per seed in a chunk of trajectories with paired image ``x``: the A2 cosines and the A4
    decompositions against x and against each seed's own sample (both pairings)."""
    return {"cos": noise_content(t, x), "dec": decompose_trajectory(t, x), "own": decompose_trajectory(t, t.x_0),
            "own_in": decompose_trajectory(t, t.x_0, "input")}


def analyze_prompt(subject: Subject, p: Prompt, cfg: KimConfig) -> tuple[PromptAnalysis, Provenance]:
    """A1–A4 and severity for one prompt of ``subject`` (with its paired training sample ``p.x``)."""
    # A2 and A4 are per seed: reduced chunk by chunk while its ε's and x_t are in memory; A3 needs x_t and x̂₀
    # of all seeds
    tr, parts = _trajectory(subject, p, cfg, cfg.guidance, TENSOR_FIELDS, keep=("x_t", "x0_hat"),
                            each=partial(_per_seed, p.x))
    cos = {k: torch.cat([q["cos"][k] for q in parts], 1).mean(1) for k in parts[0]["cos"]}
    dec, own, own_in = (_joined([q[k] for q in parts]) for k in ("dec", "own", "own_in"))
    conv = convergence(tr, cfg.collapse_threshold)
    loss = guided_loss(subject.denoiser, p.x, p.cond, subject.grid, g=cfg.sweep, draws=cfg.draws,
                       batch_size=cfg.batch_size)
    sev = severity(tr.x_0, p.x, subject.references, decode=subject.decode)
    pa = PromptAnalysis(
        id=p.id, text=p.text, kind=p.kind, D1=dec.D1, D2=dec.D2, D1_selfref=own.D1, D2_selfref=own.D2, severity=sev,
        w0=dec.w0.mean(1), wT=dec.wT.mean(1), resid=dec.resid.mean(1),
        cos=cos,
        V_ratio_x_t=conv["V_ratio_x_t"], V_ratio_x0_hat=conv["V_ratio_x0_hat"], collapse_x_t=conv["collapse_x_t"],
        loss_cond=loss.loss_cond, loss_uncond=loss.loss_uncond, loss_guided=loss.loss_guided, k_guided=loss.k_guided,
        collapse_x0_hat=conv["collapse_x0_hat"], **_graded(subject, p, tr, own_in))
    if cfg.sample_sweep:
        pa = replace(pa, **_sweep(subject, p, cfg, tr, dec))
    return pa, tr.provenance


def analyze_unpaired(subject: Subject, p: Prompt, cfg: KimConfig) -> tuple[SelfRefAnalysis, Provenance]:
    """What needs no training image for one prompt: the self-referenced D, A3 and the copy share of references."""
    tr, parts = _trajectory(subject, p, cfg, cfg.guidance, ("x_t", "x0_hat"),
                            each=lambda t: decompose_trajectory(t, t.x_0))
    own, conv = _joined(parts), convergence(tr, cfg.collapse_threshold)
    copy = None
    if subject.references is not None and len(subject.references) >= 2:
        ratio, _ = nn_ratio(tr.x_0.flatten(1), subject.references.flatten(1).to(tr.x_0))
        copy = float((ratio <= COPY_RATIO).double().mean())
    return SelfRefAnalysis(p.id, p.kind, own.D1, own.D2, own.w0.mean(1), conv["V_ratio_x_t"], conv["V_ratio_x0_hat"],
                           conv["collapse_x_t"], copy), tr.provenance


def _check(subject: Subject) -> None:
    if not subject.prompts:
        raise ValueError(f"subject {subject.name!r} has no prompts")
    if any(p.x is not None for p in subject.prompts) and subject.references is None:
        raise ValueError(f"subject {subject.name!r} has no references (training samples) for the copy rule")


def _settings(subject: Subject, p: Prompt, cfg: KimConfig) -> dict:
    """What a saved prompt was computed with, as JSON reads it back (so a resumed run compares equal)."""
    refs = subject.references
    config = {k: v for k, v in asdict(cfg).items() if k != "batch_size"}  # round-off only: a rerun may change it
    return json.loads(json.dumps({"config": config, "subject": subject.name, "steps": subject.steps, "id": p.id,
                                  "text": p.text, "paired": p.x is not None,
                                  "references": None if refs is None else list(refs.shape)}))


def _saved(subject: Subject, p: Prompt, cfg: KimConfig, units: Path | None, index: int) -> _Unit | None:
    """The prompt's analysis saved in ``units`` (None when absent); one saved with other settings is refused."""
    settings, name = _settings(subject, p, cfg), f"prompt-{index:05d}"
    if units is None or not (units / f"{name}.json").exists():
        return None
    unit = _Unit.load(units, name)
    if unit.settings != settings:
        diff = {k: (unit.settings.get(k), v) for k, v in settings.items() if unit.settings.get(k) != v}
        raise ValueError(f"{units} holds prompt {index} made with other settings (saved, requested): {diff}; "
                         "use another --out or delete it")
    return unit


def _analyze(ref, cfg: KimConfig, subject: Subject) -> _Unit:
    """One prompt's analysis (a unit of :mod:`diffmem.executor`: ``ref`` is its id in the worker's subject)."""
    [p] = pick(subject, [ref])
    if p.x is not None:
        pa, prov = analyze_prompt(subject, p, cfg)
        return _Unit(_settings(subject, p, cfg), prov, paired=pa)
    sr, prov = analyze_unpaired(subject, p, cfg)
    return _Unit(_settings(subject, p, cfg), prov, unpaired=sr)


def run_kim(subject: Subject, cfg: KimConfig = KimConfig(), *, progress: Callable[[int, int], None] | None = None,
            units: str | Path | None = None, executor=None) -> KimResult:
    """Run the study on every prompt of ``subject``. ``units``: a folder where each prompt is saved as it finishes
    and found again by a rerun (resume after a kill). ``progress(k, todo)`` is called before the first prompt
    (k = 0) and after each prompt computed in this call (not after those found in ``units``). The prompts run on
    ``executor`` (:mod:`diffmem.executor`; default: here, in order); seeds are fixed per prompt, so the result does
    not depend on where each ran."""
    _check(subject)
    units = None if units is None else Path(units)
    done = [_saved(subject, p, cfg, units, i) for i, p in enumerate(subject.prompts)]
    todo = [i for i, u in enumerate(done) if u is None]
    if progress:
        progress(0, len(todo))
    refs = prompt_refs(subject, [subject.prompts[i] for i in todo])
    tasks = [partial(_analyze, ref, cfg) for ref in refs]
    for k, (j, unit) in enumerate((executor or SerialExecutor()).imap(tasks, subject), start=1):
        if units is not None:
            unit.save(units, f"prompt-{todo[j]:05d}")  # arrays first, then the JSON: a unit exists once its JSON does
        done[todo[j]] = unit
        if progress:
            progress(k, len(todo))
    rows = [u.paired for u in done if u.paired is not None]
    selfref = [u.unpaired for u in done if u.unpaired is not None]
    return _result(subject, cfg, rows, selfref, done[-1].provenance)


def _result(subject: Subject, cfg: KimConfig, rows: list, selfref: list, prov: Provenance) -> KimResult:
    sweep = torch.tensor(cfg.sweep, dtype=torch.float64)
    grid = subject.grid
    ab = torch.cat([grid.alpha_bar[1:], grid.alpha_bar_next[-1:]])
    provenance = Provenance(model=prov.model, solver=prov.solver, grid=prov.grid, guidance=prov.guidance,
                            seeds=list(range(cfg.n_seeds)),
                            extra={"subject": subject.name, "similarity": sorted(rows[0].severity) if rows else [],
                                   "primary_severity": cfg.primary, "copy_rule": "l2 nn ratio <= 1/3, paired",
                                   **({"selection": subject.info["selection"]} if "selection" in subject.info else {})})
    skipped = {}
    if selfref:
        skipped[NEEDS_TRAINING_IMAGE.split(" need")[0]] = (f"{len(selfref)} prompt(s) have no training image "
                                                          f"(e.g. {selfref[0].id!r}); they need it")
    summary = None
    if len(rows) >= 3:
        summary = summarize(rows, sweep, guidance=cfg.guidance, primary=cfg.primary, n_seeds=cfg.n_seeds,
                            n_boot=cfg.n_boot)
    else:
        skipped["correlation of D with severity"] = (f"needs at least 3 prompts with a training image, got "
                                                     f"{len(rows)}")
    return KimResult(rows, ab, grid.timesteps, sweep, summary, provenance, config=cfg, selfref=selfref,
                     skipped=skipped)
