"""``diffmem mitigate``'s job: build the subject, run the mitigation harness, print the table of its rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from diffmem.detectors.labels import NEGATIVE_KINDS, assign_splits
from diffmem.mitigations.base import MITIGATIONS
from diffmem.mitigations.harness import MitigationRun, run_mitigation
from diffmem.subject import Subject

__all__ = ["run_mitigate", "inference_methods", "format_table", "QUICK", "fewer_negatives"]

# --quick: one generation per prompt, the default setting of each method only, a short bootstrap
QUICK = {"n_gen": 1, "grid": False, "n_boot": 200}


def inference_methods() -> list[str]:
    """Every registered inference-time mitigation, by name."""
    return sorted(n for n, cls in MITIGATIONS.items() if cls.kind == "inference")


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
                 negatives_per_kind: int | None = None,
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
                          gate_fpr=gate_fpr, out=out, n_boot=n_boot, select=select, progress=progress)


def _f(v, scale=1.0, fmt="{:.3f}") -> str:
    return "—" if v is None else fmt.format(v * scale)


def format_table(run: MitigationRun) -> list[list[str]]:
    """Header and one line per row: copy rate before → after (CI), alignment, FID, general deltas, cost, flags."""
    head = ["method", "setting", "gated", "copy before", "copy after [95% CI]", "template b→a", "align b→a", "FID b→a",
            "gen Δalign (pts)", "gen ΔFID", "extra NFE", "NFE ×", "s/img", "false gate", "pareto", "goal"]
    lines = [head]
    for r in run.summary.rows:
        ci = "" if r.trigger_copy_rate_after_ci is None else \
            f" [{r.trigger_copy_rate_after_ci[0]:.2f}, {r.trigger_copy_rate_after_ci[1]:.2f}]"
        lines.append([r.method + (" (ours)" if r.ours else ""), r.setting, "yes" if r.gated else "no",
                      _f(r.trigger_copy_rate_before), _f(r.trigger_copy_rate_after) + ci,
                      f"{_f(r.template_copy_rate_before)}→{_f(r.template_copy_rate_after)}",
                      f"{_f(r.alignment_before)}→{_f(r.alignment_after)}",
                      f"{_f(r.fid_before, fmt='{:.2f}')}→{_f(r.fid_after, fmt='{:.2f}')}",
                      _f(r.general_alignment_delta, 100, "{:+.1f}"), _f(r.general_fid_delta, fmt="{:+.2f}"),
                      f"{r.extra_nfe_per_image:+.1f}", f"{r.nfe_ratio:.2f}", f"{r.seconds_per_image:.4f}",
                      _f(r.false_gate_rate, fmt="{:.2f}"), "*" if r.on_pareto else "", "yes" if r.meets_goal else ""])
    return lines
