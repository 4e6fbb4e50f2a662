"""Atomic writes, strict JSON and numbered run directories.

Every file is written to a temporary name in the same directory and renamed into place (``os.replace`` is atomic on
POSIX), so an interrupted run never leaves a half-written file under a final name. Files get the mode an ordinary
``open`` would give under the process umask (group-readable under umask 022), not the 0600 of a temporary file, so
a results folder shared with co-authors stays readable. JSON is strict (RFC 8259): a non-finite number is written as
``null`` and listed, with what it was, under the top-level key ``"nonfinite"``. Run directories are numbered like
EDM's ``00042-desc`` and can be reopened to resume: finished pieces are simply the files that exist.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "write_arrays", "read_arrays",
           "new_run_dir", "strict_json", "file_mode", "resumable_unit", "saved_unit", "safe_name",
           "check_safetensors", "remove_stale_tmp", "check_out_dir",
           "mark_stale", "file_lock", "claim_out_dir", "claimed_out_dir", "release_out_dir", "check_device"]

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
    """A JSON file; a missing file is a FileNotFoundError naming it, a broken one a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist or is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); write it again") from None


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


MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def check_safetensors(path: str | os.PathLike) -> dict:
    """The header of a safetensors file, checked without reading the tensors: it exists, its header is a JSON
    object of sane length and every tensor's bytes lie inside the file (a truncated copy is caught here)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file")
    size = path.stat().st_size
    fix = "write it again (safetensors.torch.save_file) or copy it completely"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file ({size} bytes); {fix}")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{str(path)!r} is not a safetensors file or is truncated (header of {n} bytes, file of "
                             f"{size}); {fix}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ValueError(f"{str(path)!r} is not a safetensors file (header is not JSON); {fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a safetensors file (header is not a JSON object); {fix}")
    ends = [_end(v) for k, v in header.items() if k != "__metadata__"]
    if None in ends:
        raise ValueError(f"{str(path)!r} is not a safetensors file (bad tensor entry in its header); {fix}")
    if max(ends, default=0) > size - 8 - n:
        raise ValueError(f"{str(path)!r} is truncated: its tensors need {max(ends) + 8 + n} bytes, the file has "
                         f"{size}; {fix}")
    return header


def _end(entry) -> int | None:
    """Where a header entry's bytes end, or None when the entry is malformed."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets):
        return offsets[1]
    return None


def read_arrays(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, foreign or truncated file is a one-line error."""
    check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError is not an OSError/ValueError subclass
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({err})") from None


def remove_stale_tmp(folder: str | os.PathLike, *, older_than_s: float = 60.0) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a hard kill left under ``folder`` (recursive).

    Only files untouched for ``older_than_s`` seconds go, so a concurrent writer's file in flight is kept."""
    import time

    folder, now, gone = Path(folder), time.time(), []
    if not folder.is_dir():
        return gone
    for p in folder.rglob(".*.tmp"):
        try:
            if p.is_file() and now - p.stat().st_mtime > older_than_s:
                p.unlink()
                gone.append(p)
        except FileNotFoundError:  # another process cleaned it first
            continue
    return gone


def check_out_dir(path: str | os.PathLike) -> Path:
    """``path`` as an output folder: created when absent; an existing file or an unwritable folder is refused."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {str(path)!r} is an existing file; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (PermissionError, FileExistsError, NotADirectoryError) as err:
        raise PermissionError(f"cannot create output folder {str(path)!r} ({err.strerror}); choose a writable "
                              "place") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {str(path)!r} is not writable; choose a writable place")
    return path


def mark_stale(folder: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """Rename the finished results ``names`` of an earlier run in ``folder`` to ``<name>.stale`` before a rerun,
    so a killed rerun never leaves an old, complete-looking result beside new files."""
    moved = []
    for name in names:
        p = Path(folder) / name
        if p.exists():
            os.replace(p, p.with_name(p.name + ".stale"))
            moved.append(p)
    return moved


_CLAIMS: dict[Path, object] = {}


def claim_out_dir(path: str | os.PathLike) -> Path:
    """Take ``path`` (an output folder) for this process until it exits: a second process writing the same folder
    is refused with a one-line error instead of interleaving files. Claiming again in the same process is a no-op."""
    import fcntl

    path = check_out_dir(path).resolve()
    if path in _CLAIMS:
        return path
    lock = path / ".diffmem.lock"
    while True:
        f = open(lock, "a+b")  # kept open: the lock lives as long as the process (or until released)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ValueError(f"output folder {str(path)!r} is in use by another diffmem process; wait for it to "
                             "finish or choose another --out") from None
        try:  # a releasing holder unlinks the file: the lock counts only on the file still at that name
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    _CLAIMS[path] = f
    return path


def release_out_dir(path: str | os.PathLike) -> None:
    """Give up this process's claim on ``path`` (no-op when it holds none)."""
    path = Path(path).expanduser().resolve()
    f = _CLAIMS.pop(path, None)
    if f is not None:
        (path / ".diffmem.lock").unlink(missing_ok=True)  # still held: no file is left behind in a finished folder
        f.close()  # closing the descriptor drops the flock


@contextlib.contextmanager
def claimed_out_dir(path: str | os.PathLike):
    """:func:`claim_out_dir` for the block: released at its end, so a library caller (a notebook, a test) can run
    the next job into the same folder; a claim this process already held is left held."""
    held = Path(path).expanduser().resolve() in _CLAIMS
    path = claim_out_dir(path)
    try:
        yield path
    finally:
        if not held:
            release_out_dir(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout_s: float | None = None):
    """An exclusive ``fcntl.flock`` on ``path`` (created), held for the block: how two processes writing one
    summary take turns. The lock dies with its process, so a kill never leaves it held. With ``timeout_s`` a
    lock still held after that long is refused with a one-line error."""
    import fcntl
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if timeout_s is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout_s:
                    raise ValueError(f"{path} is locked by another diffmem process; wait for it or use another "
                                     "--out") from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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


def check_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device that exists on this machine; a bogus name or an absent accelerator is refused."""
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, False):
        raise ValueError(f"device {str(device)!r} is not available on this machine (torch "
                         f"{torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def saved_unit(path: str | os.PathLike, settings: dict, tally: dict) -> dict | None:
    """The unit saved at ``path`` if it was made under ``settings`` (counted ``reused``), else None (counted
    ``recomputed`` when a unit made under other settings is there)."""
    path = Path(path)
    if not path.exists():
        return None
    stored = read_json(path)
    if stored.get("settings") == settings:
        tally["reused"] += 1
        return stored
    tally["recomputed"] += 1
    return None


def resumable_unit(path: str | os.PathLike, settings: dict, compute, tally: dict) -> dict:
    """The unit of work saved at ``path`` if it was made under ``settings``, else ``{"settings": settings,
    **compute()}`` written there atomically; ``tally`` counts ``computed``, ``reused`` and ``recomputed`` units.

    Units made under other settings are recomputed, never reused, so a resumed job cannot mix settings."""
    stored = saved_unit(path, settings, tally)
    if stored is not None:
        return stored
    unit = {"settings": settings, **compute()}
    write_json(path, unit)
    tally["computed"] += 1
    return unit


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.+-]`` replaced by ``_`` (a file or folder name)."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
