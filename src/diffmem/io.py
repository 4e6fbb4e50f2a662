"""Atomic writes and numbered run directories.

Every file is written to a temporary name in the same directory and renamed into place (``os.replace`` is atomic on
POSIX), so an interrupted run never leaves a half-written file under a final name. Run directories are numbered
like EDM's ``00042-desc`` and can be reopened to resume: finished pieces are simply the files that exist.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "write_arrays", "read_arrays",
           "new_run_dir"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN is written as JSON ``NaN`` so nothing is lost)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_arrays(path: str | os.PathLike, arrays: dict[str, torch.Tensor]) -> Path:
    """Atomically write named tensors as safetensors (never pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in arrays.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_arrays(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def new_run_dir(root: str | os.PathLike, desc: str) -> Path:
    """Create ``root/NNNNN-desc`` with the next free number (safe against concurrent creators)."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", desc):
        raise ValueError(f"run description must be [A-Za-z0-9_.+-]+, got {desc!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        path = root / f"{n:05d}-{desc}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
