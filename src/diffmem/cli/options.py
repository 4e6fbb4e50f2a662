"""The table of every command's options, generated from the parser: ``python -m diffmem.cli.options`` prints it,
``python -m diffmem.cli.options --readme README.md`` rewrites the table between the README's ``options-table``
markers.

Shared options (:mod:`diffmem.cli.common`) are one column each, marked where a command takes them (``·`` where
not); a command's own options are listed after them.
"""

from __future__ import annotations

import argparse

from diffmem.cli.main import build_parser

__all__ = ["SHARED", "command_options", "options_table", "update_readme"]

START, END = "<!-- options-table: python -m diffmem.cli.options -->\n", "\n<!-- /options-table -->"

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


def update_readme(path) -> bool:
    """Replace the table between the markers of the README at ``path``; True when it changed."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path} has no options-table markers ({START.strip()} ... {END.strip()})")
    i, j = text.index(START) + len(START), text.index(END)
    new = text[:i] + options_table() + text[j:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # pragma: no cover
    import sys

    if sys.argv[1:2] == ["--readme"] and len(sys.argv) == 3:
        print("updated" if update_readme(sys.argv[2]) else "already current")
    else:
        print(options_table())
