"""``diffmem mitigate --world W | --model DIR --prompts FILE --out DIR [--methods …] [--gate DETECTOR]``.

Runs every inference-time mitigation (or ``--methods``) at its default and along its knob's published grid, ungated
and, with ``--gate``, gated by a detector calibrated at ``--gate-fpr`` on the calibration split's negatives. The
trigger set is the planted (memorized) prompts, the general set the evaluation split's negatives. Writes
DIR/summary.json (rows, Pareto front, provenance) and DIR/rows.csv; resumes a killed run in the same DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from rich.console import Console
from rich.table import Table

from diffmem.cli.common import _positive, add_command, emit, progress_enabled, start_run
from diffmem.cli.detect import add_subject_args, names, subject_from_args, wide_console
from diffmem.detectors.base import make_detector
from diffmem.mitigations.base import make_mitigation
from diffmem.reports.html import finish_report
from diffmem.runners.mitigate import QUICK, format_table, inference_methods, run_mitigate

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
    if args.workers or args.ray:
        raise ValueError("--workers/--ray: 'mitigate' runs in this process only for now; drop the flag")
    if not 0 < args.gate_fpr < 1:  # NaN fails this too
        raise ValueError(f"--gate-fpr {args.gate_fpr!r} must lie in (0, 1), e.g. 0.01")
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise ValueError(f"--guidance {args.guidance!r} must be a finite CFG weight >= 0, e.g. 7.5")
    if args.gate is not None:
        make_detector(args.gate)
    for m in (*(args.methods or ()), *args.select, *(m for m, _ in args.grid)):
        make_mitigation(m)


def _say(msg: str) -> None:
    print(f"running {msg}", file=sys.stderr, flush=True)


def _cli(args) -> int:
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
    if args.dry_run:
        return emit(args, {"subject": subject.name, "prompts": len(subject.prompts), "steps": subject.steps,
                           "methods": methods, "gate": args.gate, "gate_fpr": args.gate_fpr,
                           "n_gen": args.n_gen or quick.get("n_gen", 4), "select": list(args.select),
                           "out": str(args.out)})
    start_run(args.out, ("summary.json", "rows.csv", "report.html"))
    run = run_mitigate(subject, args.out, methods=methods, gate=args.gate,
                       gate_fpr=args.gate_fpr, n_gen=args.n_gen or quick.get("n_gen", 4), base_seed=args.seed,
                       guidance=args.guidance, grid=quick.get("grid", True) and not args.no_sweep,
                       n_boot=quick.get("n_boot", 1000), select=tuple(args.select),
                       negatives_per_kind=args.negatives_per_kind,
                       progress=_say if progress_enabled(args) else None)
    if not (args.json or args.quiet):
        head, *lines = format_table(run)
        t = Table(title=f"mitigations on {run.summary.provenance['subject']['subject']} (trigger set; "
                  "general-set deltas)")
        for col in head:
            t.add_column(col, no_wrap=True)
        for line in lines:
            t.add_row(*line)
        Console(width=max(wide_console().width, 200)).print(t)
    # the closing line stays one JSON object (scripts and the resume tests read it)
    print(json.dumps({"out": str(args.out), "report": str(finish_report(args.out)),
                      "seconds": round(run.summary.seconds, 1), **run.summary.units}))
    return 0
