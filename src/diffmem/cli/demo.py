"""``diffmem demo``: the main job on the embedded default world (digits-t2i).

Sections, each saved under the run folder and summarized in ``report.md``: ``world`` (the world report),
``kim`` (Kim et al.'s analyses, quick preset), ``theory`` (Ye et al.'s quick checks) and always a closed-form check
(the empirical denoiser copies, the population denoiser does not). See :mod:`diffmem.runners.demo`.
"""

from __future__ import annotations

import argparse

from diffmem.runners.demo import SECTIONS, run_demo

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default world and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="diffmem-demo", help="root directory for run folders (default: %(default)s)")
    p.add_argument("--samples", dest="n_samples", type=int, default=None,
                   help="seeds per setting of the closed-form check (default: 32; --quick: 8)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps of the closed-form check (default: 50; "
                   "--quick: 20)")
    p.add_argument("--seed", type=int, default=0, help="first seed; also seeds the world (default: %(default)s)")
    p.add_argument("--world", default="digits-t2i", help="text world of the world and kim sections "
                   "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: quick world report, 4 prompts per kind for "
                   "kim, 8 closed-form samples with 20 steps")
    p.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="leave a section out (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    run = run_demo(args.out, n_samples=args.n_samples, steps=args.steps, seed=args.seed, progress=not args.no_progress,
                   sections=tuple(s for s in SECTIONS if s not in args.skip), world=args.world, quick=args.quick)
    print((run / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {run}; open {run / 'report.html'}")
    return 0
