"""``diffmem`` command line: one module per sub-command under ``diffmem.cli``, each with ``add_parser(sub)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from diffmem.version import __version__

__all__ = ["main", "build_parser", "COMMANDS"]

# Sub-command modules in ``diffmem.cli``; each defines ``add_parser(subparsers)`` which sets ``run=fn(args)``.
COMMANDS = ("demo", "train", "world_report", "theory", "similarity", "analyze", "prune", "detect", "audit", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffmem", description="Measure, explain, detect and mitigate memorization in diffusion models.")
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("version", help="print the package version").set_defaults(run=lambda args: print(__version__))
    for name in COMMANDS:
        importlib.import_module(f"diffmem.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except ValueError as err:  # bad input: one clear line, not a traceback
        print(f"diffmem {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
