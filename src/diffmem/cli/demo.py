"""``diffmem demo``: the main job on the embedded default world (digits-t2i).

Sections, each saved under ``--out`` and summarized in ``report.md``: ``world`` (the world report), ``kim`` (Kim
et al.'s analyses, quick preset), ``theory`` (Ye et al.'s quick checks) and always a closed-form check (the
empirical denoiser copies, the population denoiser does not). ``--out`` is the exact folder written (default
``diffmem-demo``); a second run into it overwrites the first. See diffmem.runners.demo.
"""

from __future__ import annotations

from diffmem.cli._names import DEMO_SECTIONS
from diffmem.cli.common import add_command, add_common, emit, progress_enabled

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = add_command(sub, "demo", __doc__)
    add_common(p, out="diffmem-demo", seed=0, steps="closed-form check; default 50, --quick: 20")
    p.add_argument("--samples", dest="n_samples", type=int, default=None,
                   help="seeds per setting of the closed-form check (default: 32; --quick: 8)")
    p.add_argument("--world", default="digits-t2i", help="text world of the world and kim sections "
                   "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: quick world report, 4 prompts per kind for "
                   "kim, 8 closed-form samples with 20 steps")
    p.add_argument("--skip", action="append", default=[], choices=DEMO_SECTIONS,
                   help="leave a section out (repeatable)")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.runners.demo import SECTIONS, run_demo

    sections = tuple(s for s in SECTIONS if s not in args.skip)
    settings = {"out": str(args.out), "world": args.world, "quick": args.quick, "sections": list(sections),
                "n_samples": args.n_samples, "steps": args.steps, "seed": args.seed}
    if args.dry_run:
        return emit(args, {**settings})
    run = run_demo(args.out, n_samples=args.n_samples, steps=args.steps, seed=args.seed,
                   progress=progress_enabled(args), sections=sections, world=args.world, quick=args.quick)
    report = (run / "report.md").read_text(encoding="utf-8")
    return emit(args, {"out": str(run), "report": str(run / "report.md"), "html": str(run / "report.html"),
                       "sections": list(sections)},
                table=lambda: print(report))
