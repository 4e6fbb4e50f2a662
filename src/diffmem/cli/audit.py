"""``diffmem audit --world W | --model DIR --prompts FILE --out DIR``: which prompts reproduce training images?

Prompts only: a cheap screen scores every prompt, the top fraction is escalated to an expensive detector and
sampled once, and DIR/audit.csv (+ audit.json) ranks the prompts with a verdict, the sample and — with --refs —
the nearest reference. States the NFE spent and, with --compare-full, the recall kept against scoring every prompt
with the expensive detector. Thresholds are on oriented scores (higher = memorized), e.g. from a `detect` run.
"""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from diffmem.cli.common import progress_enabled
from diffmem.cli.detect import add_subject_args, executor_from_args, subject_from_args, wide_console
from diffmem.detectors.audit import AuditResult, audit, threshold_from_summary

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="rank prompts by memorization: cheap screen, expensive escalation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subject_args(p)
    p.add_argument("--screen", default="wen-step1", help="cheap detector for every prompt (default: %(default)s)")
    p.add_argument("--expensive", default="wen-all", help="detector for the escalated prompts (default: %(default)s)")
    p.add_argument("--fraction", type=float, default=0.1, help="share escalated (default: %(default)s)")
    p.add_argument("--n-gen", type=int, default=1, help="generations per prompt (default: %(default)s)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, help="flag escalated prompts above this (oriented) score")
    thr.add_argument("--calibration", metavar="SUMMARY", help="summary.json of a detect run: its 1%% threshold")
    p.add_argument("--refs", metavar="DIR|NPZ", help="reference images: report each sample's nearest one")
    p.add_argument("--compare-full", action="store_true", help="also score every prompt with --expensive")
    p.add_argument("--no-samples", action="store_true", help="do not sample the escalated prompts")
    p.add_argument("--top", type=int, default=15, help="rows to print (default: %(default)s)")
    p.set_defaults(run=_cli)


def _print(result: AuditResult, top: int) -> None:
    t = Table(title=f"audit: {result.screen} → {result.expensive} on the top {result.fraction:.0%}")
    for col in ("rank", "prompt", "verdict", "score", "screen", "nearest"):
        t.add_column(col, justify="right" if col in ("rank", "score", "screen") else "left")
    for r in result.rows[:top]:
        near = "" if r.nearest_ref is None else f"#{r.nearest_ref} ({r.nearest_ratio:.2f})"
        t.add_row(str(r.rank), r.prompt, r.verdict, "—" if r.score is None else f"{r.score:.3f}",
                  f"{r.screen_score:.3f}", near)
    wide_console().print(t)


def _cli(args) -> int:
    subject = subject_from_args(args)
    threshold = args.threshold
    if args.calibration:
        threshold = threshold_from_summary(args.calibration, args.expensive, args.n_gen)
    with executor_from_args(args) as executor:
        result = audit(subject, out=args.out, screen=args.screen, expensive=args.expensive, fraction=args.fraction,
                       n_gen=args.n_gen, base_seed=args.seed, threshold=threshold, refs=args.refs,
                       samples=not args.no_samples, compare_full=args.compare_full, executor=executor,
                       progress=None if not progress_enabled(args) else lambda msg: print(msg, file=sys.stderr,
                                                                                          flush=True))
    if not (args.json or args.quiet):  # --json / -q: only the closing JSON line
        _print(result, args.top)
    print(json.dumps({"out": str(args.out), "nfe": result.nfe, "full": result.full,
                      "seconds": round(result.seconds, 1)}))
    return 0
