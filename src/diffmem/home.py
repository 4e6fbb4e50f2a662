"""Where diffmem caches what it trains itself (world checkpoints, the digits classifier).

``$DIFFMEM_HOME`` overrides the default ``~/.cache/diffmem``; nothing is ever downloaded into it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["diffmem_home"]


def diffmem_home(*parts: str, create: bool = True) -> Path:
    """``$DIFFMEM_HOME/<parts>`` (default ``~/.cache/diffmem``), created on demand unless ``create`` is false (a
    path that is only named, e.g. by ``--dry-run``, must leave nothing behind)."""
    root = Path(os.environ.get("DIFFMEM_HOME") or Path.home() / ".cache" / "diffmem").expanduser()
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
