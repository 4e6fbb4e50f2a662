"""``diffmem`` command line: one module per sub-command under ``diffmem.cli``, each with ``add_parser(sub)``.

Only the chosen command's module is imported (the others appear in ``--help`` by their one-line help in
:data:`diffmem.cli.common.HELP`), so ``diffmem --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from diffmem.cli.common import HELP, handle_error, prepare, release_claims
from diffmem.version import __version__

__all__ = ["main", "build_parser", "COMMANDS"]

# command -> module in ``diffmem.cli``; each defines ``add_parser(subparsers)`` which sets ``run=fn(args)``
COMMANDS = {"demo": "demo", "train": "train", "world-report": "world_report", "theory": "theory",
            "similarity": "similarity", "analyze": "analyze", "prune": "prune", "detect": "detect", "audit": "audit",
            "mitigate": "mitigate",
            "report": "report"}


def _version(args) -> int:
    print(f"diffmem {__version__}")
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command's options, or only ``only``'s (the others listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="diffmem", description="Measure, explain, detect and mitigate memorization in diffusion models.")
    parser.add_argument("--version", action="version", version=f"diffmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("version", help="print the package version").set_defaults(run=_version)
    for name, module in COMMANDS.items():
        if only is None or only == name:
            try:
                mod = importlib.import_module(f"diffmem.cli.{module}")
            except ModuleNotFoundError as err:  # a command whose module has not landed on this branch
                if err.name != f"diffmem.cli.{module}":
                    raise
                continue
            mod.add_parser(sub)
        elif importlib.util.find_spec(f"diffmem.cli.{module}") is not None:
            sub.add_parser(name, help=HELP[name], add_help=False)
    return parser


def _chosen(argv: list[str]) -> str | None:
    """The command named in ``argv`` (the first word that is one), or None."""
    return next((a for a in argv if a in COMMANDS), None) if argv else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen(argv) or "").parse_args(argv)
    try:
        prepare(args)
        return args.run(args) or 0
    except BaseException as err:  # noqa: BLE001 — the one place errors become exit codes
        if isinstance(err, SystemExit):
            raise
        return handle_error(args, err)
    finally:
        release_claims()  # --out is held while the command runs, not for the rest of a caller's process


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
