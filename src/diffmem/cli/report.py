"""``diffmem report RUN_DIR``: one self-contained HTML page (figures embedded, no network) from the saved results of
a run folder: demo, world report, Kim analyses, theory, pruning, detection. It also writes the per-row CSVs the
results imply (e.g. ``kim/prompts.csv`` with the prompt text) beside them. ``--format svg|pdf`` (and ``--dpi``)
additionally export the figures it can draw (Kim F1–F6) into ``figures/`` of each result folder for a paper.
"""

from __future__ import annotations

from pathlib import Path

from diffmem.cli.common import add_command, add_common, emit

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = add_command(sub, "report", __doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run folder written by a diffmem job")
    # --out is an output *folder* on every command; the page is one file, hence its own flag
    p.add_argument("--html", type=Path, metavar="FILE", help="the HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--format", dest="fmt", choices=("png", "svg", "pdf"), help="also export figures in this format")
    p.add_argument("--dpi", type=int, default=200, help="resolution of exported raster figures (default: %(default)s)")
    add_common(p, out=None, threads=False, seed=None, dry_run=False)
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.reports.html import export_figures, write_report

    if args.dpi < 10:
        raise ValueError(f"--dpi must be at least 10, got {args.dpi}")
    if not args.run_dir.is_dir():
        raise ValueError(f"RUN_DIR {str(args.run_dir)!r} is not a folder; give the --out folder of a diffmem job")
    figures = [str(p) for p in export_figures(args.run_dir, args.fmt, args.dpi)] if args.fmt else []
    return emit(args, {"report": str(write_report(args.run_dir, args.html)), "figures": figures})
