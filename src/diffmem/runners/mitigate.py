"""``diffmem mitigate``'s job: build the subject, run the mitigation harness, print the table of its rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from diffmem.detectors.labels import NEGATIVE_KINDS, POSITIVE_KINDS, assign_splits
from diffmem.io import write_json
from diffmem.mitigations.base import MITIGATIONS, make_mitigation
from diffmem.mitigations.harness import MitigationRun, run_mitigation
from diffmem.mitigations.retrigger import retrigger_audit
from diffmem.subject import Subject

__all__ = ["run_mitigate", "inference_methods", "permanent_methods", "format_table", "QUICK", "fewer_negatives",
           "run_retrigger", "retrigger_prompts"]

# --quick: one generation per prompt, the default setting of each method only, a short bootstrap
QUICK = {"n_gen": 1, "grid": False, "n_boot": 200}


def inference_methods() -> list[str]:
    """Every registered inference-time mitigation, by name."""
    return sorted(n for n, cls in MITIGATIONS.items() if cls.kind == "inference")


def permanent_methods() -> list[str]:
    """Every registered permanent (model-editing) mitigation, by name."""
    return sorted(n for n, cls in MITIGATIONS.items() if cls.kind == "permanent")


def fewer_negatives(subject: Subject, per_kind: int) -> Subject:
    """``subject`` with every planted prompt and at most ``per_kind`` prompts of each negative kind in each split
    (manifest order): a smaller general set and calibration set, the trigger set whole."""
    if per_kind < 1:
        raise ValueError(f"negatives per kind must be >= 1, got {per_kind!r}")
    splits, _ = assign_splits(subject.prompts)
    seen: dict[tuple, int] = {}
    keep = []
    for p, s in zip(subject.prompts, splits, strict=True):
        if p.kind in NEGATIVE_KINDS:
            seen[(p.kind, s)] = seen.get((p.kind, s), 0) + 1
            if seen[(p.kind, s)] > per_kind:
                continue
        keep.append(p.id)
    return subject.select(ids=keep)


def run_mitigate(subject: Subject, out: str | Path, *, methods: Sequence[str] | Mapping | None = None,
                 gate: str | None = None, gate_fpr: float = 0.01, n_gen: int = 4, base_seed: int = 0,
                 guidance: float = 7.5, grid: bool = True, n_boot: int = 1000, select: Sequence[str] = (),
                 negatives_per_kind: int | None = None, executor=None,
                 progress: Callable[[str], None] | None = None) -> MitigationRun:
    """The harness on ``subject`` for ``methods`` (default: every inference-time one), each along its grid (or
    only its default with ``grid=False``), ungated and, with ``gate``, gated; ``select`` methods also get a setting
    chosen on the calibration split; ``negatives_per_kind`` caps each negative kind per split
    (:func:`fewer_negatives`); writes ``out``."""
    if negatives_per_kind is not None:
        subject = fewer_negatives(subject, negatives_per_kind)
    names = inference_methods() if methods is None else methods
    unknown = [m for m in names if m not in MITIGATIONS]  # a Mapping iterates over its names
    if unknown:
        raise ValueError(f"unknown mitigation {unknown[0]!r}; choose from {', '.join(inference_methods())}")
    if not isinstance(names, Mapping) and not grid:
        names = {m: () for m in names}
    return run_mitigation(subject, names, n_gen=n_gen, base_seed=base_seed, guidance=guidance, gate=gate,
                          gate_fpr=gate_fpr, out=out, n_boot=n_boot, select=select, executor=executor,
                          progress=progress)


def _f(v, scale=1.0, fmt="{:.3f}") -> str:
    return "—" if v is None else fmt.format(v * scale)


def format_table(run: MitigationRun) -> list[list[str]]:
    """Header and one line per row: copy rate before → after (CI), alignment, FID, general deltas, cost, flags."""
    head = ["method", "setting", "gated", "copy before", "copy after [CI prompts] {CI seeds}", "template b→a",
            "align b→a", "FID b→a", "gen Δalign (pts)", "gen ΔFID", "extra NFE", "NFE ×", "s/img", "false gate",
            "pareto", "goal"]
    lines = [head]
    for r in run.summary.rows:
        ci = "" if r.trigger_copy_rate_after_ci is None else \
            f" [{r.trigger_copy_rate_after_ci[0]:.2f}, {r.trigger_copy_rate_after_ci[1]:.2f}]"
        seed = r.trigger_copy_rate_after_seed_ci
        ci += "" if seed is None else f" {{{seed[0]:.2f}, {seed[1]:.2f}}}"
        lines.append([r.method + (" (ours)" if r.ours else ""), r.setting, "yes" if r.gated else "no",
                      _f(r.trigger_copy_rate_before), _f(r.trigger_copy_rate_after) + ci,
                      f"{_f(r.template_copy_rate_before)}→{_f(r.template_copy_rate_after)}",
                      f"{_f(r.alignment_before)}→{_f(r.alignment_after)}",
                      f"{_f(r.fid_before, fmt='{:.2f}')}→{_f(r.fid_after, fmt='{:.2f}')}",
                      _f(r.general_alignment_delta, 100, "{:+.1f}"), _f(r.general_fid_delta, fmt="{:+.2f}"),
                      f"{r.extra_nfe_per_image:+.1f}", f"{r.nfe_ratio:.2f}", f"{r.seconds_per_image:.4f}",
                      _f(r.false_gate_rate, fmt="{:.2f}"), "*" if r.on_pareto else "", "yes" if r.meets_goal else ""])
    return lines


def retrigger_prompts(subject: Subject, n_trigger: int, n_control: int) -> tuple[list, list]:
    """(triggers, controls) of the evaluation split: the ``n_trigger`` planted prompts with the most duplicates
    (ties in manifest order) and the first ``n_control`` negatives with their own training image."""
    splits, _ = assign_splits(subject.prompts)
    ev = [p for p, s in zip(subject.prompts, splits, strict=True) if s == "evaluation" and p.x is not None]
    planted = sorted((p for p in ev if p.kind in POSITIVE_KINDS), key=lambda p: -(p.meta.get("m") or 0))
    return planted[:n_trigger], [p for p in ev if p.kind in NEGATIVE_KINDS][:n_control]


def run_retrigger(subject: Subject, out: str | Path, *, methods: Sequence = ("head-pruning", "nemo"),
                  n_trigger: int = 8, n_control: int = 4, seeds: Sequence[int] = tuple(range(4)),
                  guidance: float = 7.5, steps: int = 50, lr: float = 0.1, budget: float | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """The re-trigger audit ("Finding Dori", arXiv 2507.16880) of each permanent mitigation, fitted on the triggers
    of :func:`retrigger_prompts`, and of the unedited model (the probe's own reach): copy rate before the edit,
    after it, and after the embedding attack on the edited model. ``methods``: registry names (default
    parameters) or permanent-mitigation instances. Writes ``out/retrigger.json``."""
    say = progress or (lambda msg: None)
    trig, ctrl = retrigger_prompts(subject, n_trigger, n_control)
    if not trig:
        raise ValueError(f"subject {subject.name!r} has no planted evaluation prompts with a training image to audit")
    kw = dict(controls=ctrl, steps=steps, lr=lr, budget=budget, seeds=tuple(seeds), guidance=guidance)
    ms = [make_mitigation(m) if isinstance(m, str) else m for m in methods]
    rows = []
    for m in (None, *ms):
        name, start = "none" if m is None else m.name, time.perf_counter()
        say(f"retrigger {name}: fit")
        edited = subject if m is None else m.apply(subject, trig)
        fit_s = time.perf_counter() - start
        say(f"retrigger {name}: audit")
        audit = retrigger_audit(edited, trig, **kw)
        info = {k: v for k, v in edited.info.items() if k in ("head_pruning", "nemo")}
        rows.append({"method": name, "params": None if m is None else m.describe()["params"], **audit.summary(),
                     "fit_seconds": fit_s,
                     "audit_seconds": time.perf_counter() - start - fit_s, "edit": info, "audit": audit.to_dict()})
        result = {"rows": rows, "triggers": [p.id for p in trig], "controls": [p.id for p in ctrl],
                  "unedited_trigger_copy": rows[0]["trigger_copy_before"], "complete": len(rows) == len(ms) + 1,
                  "how": "copy = paired 1/3 rule over the seeds; trigger_copy_before = the edited model with e_p, "
                         "trigger_copy_after = the edited model with e_p + Δ (Δ by Adam on the diffusion loss of the "
                         "paired image, the DoRI probe); the 'none' row audits the unedited model",
                  "provenance": {"subject": subject.describe(), "methods": [m.describe() for m in ms],
                                 "seeds": list(seeds), "guidance": guidance, "probe_steps": steps,
                                 "sampling_steps": subject.steps, "lr": lr, "budget": budget}}
        write_json(Path(out) / "retrigger.json", result)  # after each method: a long fit loses nothing before it
    return result
