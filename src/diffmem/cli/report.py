"""``diffmem report RUN_DIR``: one self-contained HTML page (figures embedded, no network) from the saved results of
a run folder: demo, world report, Kim analyses, theory, pruning, detection. It also writes the per-row CSVs the
results imply (e.g. ``kim/prompts.csv`` with the prompt text) beside them. ``--format svg|pdf`` (and ``--dpi``)
additionally export the figures it can draw (Kim F1–F6) into ``figures/`` of each result folder for a paper.
"""

from __future__ import annotations

import argparse

from diffmem.reports.html import export_figures, write_report

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained report.html from a run folder's saved results",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by a diffmem job")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--format", dest="fmt", choices=("png", "svg", "pdf"), help="also export figures in this format")
    p.add_argument("--dpi", type=int, default=200, help="resolution of exported raster figures (default: %(default)s)")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    if args.dpi < 10:
        raise ValueError(f"--dpi must be at least 10, got {args.dpi}")
    for path in export_figures(args.run_dir, args.fmt, args.dpi) if args.fmt else []:
        print(f"figure {path}")
    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0
