"""``diffmem audit --world W | --model DIR --prompts FILE --out DIR``: which prompts reproduce training images?

Prompts only: a cheap screen scores every prompt, the top fraction is escalated to an expensive detector and
sampled once, and DIR/audit.csv (+ audit.json) ranks the prompts with a verdict, the sample and — with --refs —
the nearest reference. States the NFE spent and, with --compare-full, the recall kept against scoring every prompt
with the expensive detector. Thresholds are on oriented scores (higher = memorized), e.g. from a `detect` run.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from diffmem.cli.common import _positive, add_command, emit, progress_enabled, start_run
from diffmem.cli.detect import add_subject_args, executor_from_args, placement, subject_from_args, wide_console

if TYPE_CHECKING:
    from diffmem.detectors.audit import AuditResult

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = add_command(sub, "audit", __doc__)
    add_subject_args(p, dry_run=True)
    p.add_argument("--screen", default="wen-step1", help="cheap detector for every prompt (default: %(default)s)")
    p.add_argument("--expensive", default="wen-all", help="detector for the escalated prompts (default: %(default)s)")
    p.add_argument("--fraction", type=float, default=0.1, help="share escalated (default: %(default)s)")
    p.add_argument("--n-gen", type=_positive, default=1, metavar="N",
                   help="generations per prompt (default: %(default)s)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, help="flag escalated prompts above this (oriented) score")
    thr.add_argument("--calibration", metavar="SUMMARY", help="summary.json of a detect run: its 1%% threshold")
    p.add_argument("--refs", metavar="DIR|NPZ", help="reference images: report each sample's nearest one")
    p.add_argument("--compare-full", action="store_true", help="also score every prompt with --expensive")
    p.add_argument("--no-samples", action="store_true", help="do not sample the escalated prompts")
    p.add_argument("--top", type=_positive, default=15, metavar="N", help="rows to print (default: %(default)s)")
    p.set_defaults(run=_cli)


def _print(result: AuditResult, top: int) -> None:
    from rich.table import Table

    t = Table(title=f"audit: {result.screen} → {result.expensive} on the top {result.fraction:.0%}")
    for col in ("rank", "prompt", "verdict", "score", "screen", "nearest"):
        t.add_column(col, justify="right" if col in ("rank", "score", "screen") else "left")
    for r in result.rows[:top]:
        near = "" if r.nearest_ref is None else f"#{r.nearest_ref} ({r.nearest_ratio:.2f})"
        t.add_row(str(r.rank), r.prompt, r.verdict, "—" if r.score is None else f"{r.score:.3f}",
                  f"{r.screen_score:.3f}", near)
    wide_console().print(t)


def _check(args) -> None:
    if not 0 < args.fraction <= 1:  # NaN fails this too
        raise ValueError(f"--fraction {args.fraction!r} must lie in (0, 1]: the share of prompts escalated")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold {args.threshold!r} must be a finite score (oriented: higher = memorized)")


def _plan(subject, args, threshold) -> dict:
    """What a run would do: prompts, seeds, how many escalate, and the NFE it would spend — each detector's cost
    measured on the first prompt (nothing is written), times the prompts it scores."""
    from diffmem.detectors.base import generation_seeds, make_detector
    from diffmem.detectors.counting import measure

    seeds, P = generation_seeds(args.n_gen, args.seed), len(subject.prompts)
    k = max(1, math.ceil(args.fraction * P))
    per_prompt = {}
    for role, name in (("screen", args.screen), ("expensive", args.expensive)):
        _, cost = measure(make_detector(name), subject, list(subject.prompts[:1]), seeds)
        per_prompt[role] = cost.nfe + cost.jvp + cost.vjp
    nfe = {"screen": P * per_prompt["screen"], "escalate": k * per_prompt["expensive"],
           "samples": 0 if args.no_samples else k * 2 * subject.steps}  # one CFG sample: 2 NFE per step
    nfe["total"] = sum(nfe.values())
    if args.compare_full:
        nfe["full"] = P * per_prompt["expensive"]
    return {"subject": subject.name, "prompts": P, "seeds": seeds, "steps": subject.steps, **placement(subject),
            "screen": args.screen, "expensive": args.expensive, "escalated": k, "threshold": threshold,
            "refs": args.refs, "nfe_per_prompt": per_prompt, "nfe_estimate": nfe, "out": str(args.out)}


def _cli(args) -> int:
    from diffmem.detectors.audit import audit, threshold_from_summary
    from diffmem.detectors.base import make_detector
    from diffmem.reports.html import finish_report

    _check(args)
    for name in (args.screen, args.expensive):  # a misspelt detector is refused before any model loads
        make_detector(name)
    threshold = args.threshold
    if args.calibration:
        threshold = threshold_from_summary(args.calibration, args.expensive, args.n_gen)
    subject = subject_from_args(args)
    if args.dry_run:
        return emit(args, _plan(subject, args, threshold))
    start_run(args.out, ("audit.json", "audit.csv", "report.html"))
    with executor_from_args(args) as executor:
        result = audit(subject, out=args.out, screen=args.screen, expensive=args.expensive, fraction=args.fraction,
                       n_gen=args.n_gen, base_seed=args.seed, threshold=threshold, refs=args.refs,
                       samples=not args.no_samples, compare_full=args.compare_full, executor=executor,
                       progress=None if not progress_enabled(args) else lambda msg: print(msg, file=sys.stderr,
                                                                                          flush=True))
    flagged = sum(r.verdict == "memorized" for r in result.rows)
    return emit(args, {"subject": subject.name, "prompts": len(result.rows),
                       "escalated": sum(bool(r.escalated) for r in result.rows), "flagged": flagged,
                       "nfe": result.nfe, "full": result.full, "seconds": round(result.seconds, 1),
                       "threads": args.threads, "out": str(args.out), "report": str(finish_report(args.out))},
                table=lambda: _print(result, args.top))
