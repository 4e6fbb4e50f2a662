"""The table of every command's options, generated from the parser: ``python -m diffmem.cli.options``.

Shared options (:mod:`diffmem.cli.common`) are one column each, marked where a command takes them (``·`` where
not); a command's own options are listed after them.
"""

from __future__ import annotations

import argparse

from diffmem.cli.main import build_parser

__all__ = ["SHARED", "command_options", "options_table"]

SHARED = ("--out", "--threads", "--device", "--dtype", "--batch-size", "--seed", "--steps", "--dry-run", "--json",
          "-q", "-v", "--no-progress")


def _sub(parser: argparse.ArgumentParser) -> dict:
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return {} if action is None else dict(action.choices)


def command_options() -> dict[str, list[argparse.Action]]:
    """Every command (and sub-command, e.g. ``similarity memorization``) with its option actions."""
    out = {}
    for name, p in _sub(build_parser()).items():
        nested = _sub(p)
        for label, q in ({f"{name} {k}": v for k, v in nested.items()} if nested else {name: p}).items():
            out[label] = [a for a in q._actions if a.option_strings and a.dest != "help"]
    return out


def options_table() -> str:
    """Markdown: one row per command, one column per shared option, then the command's own options."""
    rows = ["| command | " + " | ".join(f"`{s}`" for s in SHARED) + " | own options |",
            "|---" * (len(SHARED) + 2) + "|"]
    for name, actions in command_options().items():
        flags = {s for a in actions for s in a.option_strings}
        own = sorted({a.option_strings[-1] for a in actions} - set(SHARED) - {"--quiet", "--verbose"})
        rows.append(f"| {name} | " + " | ".join("✓" if s in flags else "·" for s in SHARED) + " | "
                    + " ".join(f"`{s}`" for s in own) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(options_table())
