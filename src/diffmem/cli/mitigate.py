"""``diffmem mitigate --world W | --model DIR --prompts FILE --out DIR [--methods …] [--gate DETECTOR]``.

Runs every inference-time mitigation (or ``--methods``) at its default and along its knob's published grid, ungated
and, with ``--gate``, gated by a detector calibrated at ``--gate-fpr`` on the calibration split's negatives. The
trigger set is the planted (memorized) prompts, the general set the evaluation split's negatives. Writes
DIR/summary.json (rows, Pareto front, provenance) and DIR/rows.csv; resumes a killed run in the same DIR; runs its
units on Ray with --workers/--ray.

--retrigger METHODS instead audits permanent mitigations (head-pruning, nemo): each is fitted on the evaluation
split's most duplicated planted prompts, then a small learned perturbation of each prompt embedding tries to bring
the copies back (the "Finding Dori" probe); writes DIR/retrigger.json.
"""

from __future__ import annotations

import argparse
import math
import sys

from diffmem.cli.common import _positive, add_command, emit, progress_enabled, start_run
from diffmem.cli.detect import (
    add_subject_args,
    executor_from_args,
    names,
    placement,
    subject_from_args,
    wide_console,
)

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = add_command(sub, "mitigate", __doc__)
    add_subject_args(p, dry_run=True)
    p.add_argument("--methods", type=names, help="comma-separated registry names (default: every inference-time one)")
    p.add_argument("--gate", metavar="DETECTOR", help="detector that gates the remedy (default: ungated only)")
    p.add_argument("--gate-fpr", type=float, default=0.01, help="target FPR of the gate (default: %(default)s)")
    p.add_argument("--n-gen", type=_positive, metavar="N", help="generations per prompt (default 4; quick: 1)")
    p.add_argument("--guidance", type=float, default=7.5, help="plain CFG weight (default: %(default)s)")
    p.add_argument("--grid", action="append", type=grid_arg, default=[], metavar="METHOD:V1,V2",
                   help="sweep METHOD's knob over these values instead of its published grid (repeatable)")
    p.add_argument("--no-sweep", action="store_true", help="each method at its default only (no knob sweep)")
    p.add_argument("--select", type=names, default=(), metavar="METHODS",
                   help="methods whose knob is chosen on the calibration split and reported on the evaluation split")
    p.add_argument("--negatives-per-kind", type=_positive, metavar="N",
                   help="at most N prompts of each negative kind per split (general and calibration sets)")
    p.add_argument("--retrigger", type=names, metavar="METHODS",
                   help="audit these permanent mitigations (e.g. head-pruning,nemo) instead of the inference table")
    p.add_argument("--triggers", type=_positive, default=8, metavar="N",
                   help="--retrigger: planted prompts audited, most duplicated first (default: %(default)s)")
    p.add_argument("--probe-lr", type=float, default=0.1, metavar="LR",
                   help="--retrigger: Adam step of the embedding probe (default: %(default)s)")
    p.add_argument("--probe-steps", type=_positive, default=50, metavar="N",
                   help="--retrigger: Adam steps of the embedding probe per prompt (default: %(default)s)")
    p.add_argument("--probe-budget", type=float, metavar="EPS",
                   help="--retrigger: bound on the probe's ||Δ|| relative to ||e_p|| (default: unbounded)")
    p.set_defaults(run=_cli)


def grid_arg(text: str) -> tuple[str, tuple]:
    """``METHOD:V1,V2,…`` → (method, values); numbers become floats, anything else stays a string."""
    name, sep, values = text.partition(":")
    if not sep or not name or not values:
        raise argparse.ArgumentTypeError(f"expected METHOD:V1,V2,..., got {text!r}")

    def value(v):
        try:
            return float(v)
        except ValueError:
            return v

    return name.strip(), tuple(value(v.strip()) for v in values.split(",") if v.strip())


def knob_values(method: str, values: tuple) -> tuple:
    """``values`` as the type of ``method``'s knob (``somepalli-rt:1,8`` gives int counts, ``jain-stp:300`` a float
    τ), so a setting typed on the command line is the same setting, label and unit as the grid's."""
    from diffmem.mitigations.base import make_mitigation

    base = make_mitigation(method)
    kind = type(getattr(base, base.knob)) if base.knob else None
    if kind not in (int, float):
        return values
    bad = [v for v in values if not isinstance(v, float) or (kind is int and not v.is_integer())]
    if bad:
        raise ValueError(f"--grid {method}: {bad[0]!r} is not a valid {base.knob} ({kind.__name__})")
    return tuple(kind(v) for v in values)


def _check(args) -> None:
    """Every value checked before any model loads: names against the registries, numbers finite and in range."""
    from diffmem.detectors.base import make_detector
    from diffmem.mitigations.base import make_mitigation

    if args.retrigger:
        _check_retrigger(args)
    if not 0 < args.gate_fpr < 1:  # NaN fails this too
        raise ValueError(f"--gate-fpr {args.gate_fpr!r} must lie in (0, 1), e.g. 0.01")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise ValueError(f"--guidance {args.guidance!r} must be a finite CFG weight >= 0, e.g. 7.5")
    if args.gate is not None:
        make_detector(args.gate)
    for m in (*(args.methods or ()), *args.select, *(m for m, _ in args.grid)):
        make_mitigation(m)


def _check_retrigger(args) -> None:
    from diffmem.mitigations.base import make_mitigation
    from diffmem.runners.mitigate import permanent_methods

    if args.workers or args.ray:
        raise ValueError("--workers/--ray: --retrigger runs in this process (each edit is one fit); drop the flag")
    for m in args.retrigger:
        if make_mitigation(m).kind != "permanent":
            raise ValueError(f"--retrigger {m!r} is an {make_mitigation(m).kind}-time mitigation; give permanent "
                             f"ones: {', '.join(permanent_methods())}")
    if not (math.isfinite(args.probe_lr) and args.probe_lr > 0):
        raise ValueError(f"--probe-lr {args.probe_lr!r} must be a finite step > 0, e.g. 0.1")
    if args.probe_budget is not None and not (math.isfinite(args.probe_budget) and args.probe_budget > 0):
        raise ValueError(f"--probe-budget {args.probe_budget!r} must be a finite bound > 0, e.g. 0.1")


def _say(msg: str) -> None:
    print(f"running {msg}", file=sys.stderr, flush=True)


def _cli(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from diffmem.reports.html import finish_report
    from diffmem.runners.mitigate import QUICK, format_table, inference_methods, run_mitigate

    _check(args)
    quick = QUICK if args.quick else {}
    methods = list(args.methods or inference_methods())
    grids = {m: knob_values(m, v) for m, v in args.grid}
    unknown = [m for m in grids if m not in methods]
    if unknown:
        raise ValueError(f"--grid names {unknown[0]!r}, which is not among the methods run; add it to --methods")
    if grids:
        methods = {m: grids.get(m, () if args.quick or args.no_sweep else None) for m in methods}
    subject = subject_from_args(args)
    if args.retrigger:
        return _retrigger(args, subject)
    if args.dry_run:
        return emit(args, {"subject": subject.name, "prompts": len(subject.prompts), "steps": subject.steps,
                           **placement(subject), "workers": args.workers, "ray": args.ray, "methods": methods,
                           "gate": args.gate, "gate_fpr": args.gate_fpr,
                           "negatives_per_kind": args.negatives_per_kind,
                           "n_gen": args.n_gen or quick.get("n_gen", 4), "select": list(args.select),
                           "out": str(args.out)})
    start_run(args.out, ("summary.json", "rows.csv", "report.html"))
    with executor_from_args(args) as executor:
        run = run_mitigate(subject, args.out, methods=methods, gate=args.gate,
                           gate_fpr=args.gate_fpr, n_gen=args.n_gen or quick.get("n_gen", 4), base_seed=args.seed,
                           guidance=args.guidance, grid=quick.get("grid", True) and not args.no_sweep,
                           n_boot=quick.get("n_boot", 1000), select=tuple(args.select),
                           negatives_per_kind=args.negatives_per_kind, executor=executor,
                           progress=_say if progress_enabled(args) else None)

    def table():
        head, *lines = format_table(run)
        t = Table(title=f"mitigations on {run.summary.provenance['subject']['subject']} (trigger set; "
                  "general-set deltas)")
        for col in head:
            t.add_column(col, no_wrap=True)
        for line in lines:
            t.add_row(*line)
        console = wide_console()  # wide enough for every column unwrapped (pipes and logs included)
        need = console.measure(t, options=console.options.update(max_width=100_000)).maximum
        Console(width=max(console.width, need)).print(t)

    best = [r for r in run.summary.rows if r.meets_goal]
    return emit(args, {"subject": subject.name, "rows": len(run.summary.rows),
                       "meets_goal": [f"{r.method} {r.setting}{' gated' if r.gated else ''}" for r in best],
                       "pareto": [f"{p['method']} {p['setting']}{' gated' if p['gated'] else ''}"
                                  for p in run.summary.pareto],
                       "seconds": round(run.summary.seconds, 1), **run.summary.units, "out": str(args.out),
                       "report": str(finish_report(args.out))}, table=table)


def _retrigger(args, subject) -> int:
    from diffmem.reports.html import finish_report
    from diffmem.runners.mitigate import run_retrigger

    seeds = tuple(range(args.seed, args.seed + (args.n_gen or 4)))
    if args.dry_run:
        return emit(args, {"subject": subject.name, **placement(subject), "retrigger": list(args.retrigger),
                           "triggers": args.triggers,
                           "seeds": list(seeds), "guidance": args.guidance, "probe_steps": args.probe_steps,
                           "probe_lr": args.probe_lr, "probe_budget": args.probe_budget, "out": str(args.out)})
    start_run(args.out, ("retrigger.json", "report.html"))
    result = run_retrigger(subject, args.out, methods=args.retrigger, n_trigger=args.triggers, seeds=seeds,
                           guidance=args.guidance, steps=args.probe_steps, lr=args.probe_lr, budget=args.probe_budget,
                           progress=_say if progress_enabled(args) else None)
    rows = {f"{r['method']}_{k}": r[k] for r in result["rows"] for k in
            ("trigger_copy_before", "trigger_copy_after") if k in r}
    return emit(args, {"subject": subject.name, "triggers": len(result["triggers"]), **rows, "out": str(args.out),
                       "report": str(finish_report(args.out))})
