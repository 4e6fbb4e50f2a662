"""The one progress bar of diffmem's jobs and trainer: description, bar, done/total, elapsed and ETA, on stderr."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(enabled: bool = True, *fields: str):
    """A rich ``Progress`` with an ETA column, on stderr (stdout stays the summary), removed when done.

    ``fields`` are extra text columns (rich format strings such as ``"loss {task.fields[loss]:.4f}"``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *(TextColumn(f) for f in fields), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=True)
