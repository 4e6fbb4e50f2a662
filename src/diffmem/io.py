"""Atomic writes, strict JSON and numbered run directories.

Every file is written to a temporary name in the same directory and renamed into place (``os.replace`` is atomic on
POSIX), so an interrupted run never leaves a half-written file under a final name. Files get the mode an ordinary
``open`` would give under the process umask (group-readable under umask 022), not the 0600 of a temporary file, so
a results folder shared with co-authors stays readable. JSON is strict (RFC 8259): a non-finite number is written as
``null`` and listed, with what it was, under the top-level key ``"nonfinite"``. Run directories are numbered like
EDM's ``00042-desc`` and can be reopened to resume: finished pieces are simply the files that exist.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "write_arrays", "read_arrays",
           "new_run_dir", "strict_json", "file_mode"]

_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: 0666 less the process umask."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


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
        _publish(tmp, path)
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


def _finite(obj, where: str, found: dict):
    """``obj`` with every non-finite float replaced by None; ``found`` collects {json path: "nan" | "inf" | "-inf"}."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        found[where or "/"] = str(float(obj))
        return None
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _finite(obj.item(), where, found)
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}/{k}", found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}/{i}", found) for i, v in enumerate(obj)]
    return obj


def strict_json(obj) -> str:
    """Indented RFC 8259 JSON: non-finite numbers become ``null``, listed under ``"nonfinite"`` (top-level dicts).

    Example:
        >>> json.loads(strict_json({"auc": float("nan"), "n": 3}))
        {'auc': None, 'n': 3, 'nonfinite': {'/auc': 'nan'}}
    """
    found: dict = {}
    clean = _finite(obj, "", found)
    if found and isinstance(clean, dict):
        clean["nonfinite"] = found
    return json.dumps(clean, indent=2, default=_json_default, allow_nan=False)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Atomically write ``obj`` as strict JSON (:func:`strict_json`)."""
    return atomic_write_text(path, strict_json(obj) + "\n")


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
        _publish(tmp, path)
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
