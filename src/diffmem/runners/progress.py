"""The one progress bar of the jobs: description, bar, done/total, elapsed and ETA, on stderr."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(enabled: bool = True):
    """A rich ``Progress`` with an ETA column, on stderr (stdout stays the summary), removed when done."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
                    transient=True)
