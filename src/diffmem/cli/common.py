"""Conventions shared by every ``diffmem`` command: the common options, the thread default, the device check, the
one stdout summary format and the error handler. Light on purpose (no torch at import): ``diffmem --help`` builds
the parser without loading any model code.

Shared options (each command takes those that apply; the same flag always means the same thing):

- ``--out DIR``: the exact folder the command writes into, never a parent of numbered runs (created if missing;
  an existing folder is reused — a resumable job continues from what it holds and, once its inputs are checked,
  marks its old summary stale (:func:`start_run`); others overwrite their own files); an existing *file* or an
  unwritable place is an error. While a command runs it holds the folder: a second process given the same
  ``--out`` is refused (``prune`` instead merges the rows of concurrent runs with different ``--methods``).
  ``--dry-run`` neither creates nor claims it.
- ``--threads N``: torch CPU threads, set once before any work (default: :func:`default_threads`).
- ``--device {auto,cpu,cuda,cuda:N}``, ``--dtype {float32,float64,float16,bfloat16}``, ``--batch-size N``: where
  and how a ``--model`` runs; ``auto`` is CUDA when torch sees a GPU, else CPU (embedded worlds: always the CPU).
- ``--seed N``: the first seed; ``--steps N``: sampling steps (of the solver, never optimizer steps, except
  ``train``'s, which says so).
- ``-q``: no progress and no tables, only the summary; ``-v``: tracebacks of internal errors; ``--json``: the
  summary as one JSON object on stdout; ``--no-progress``: no progress bars (they go to stderr).
- ``--dry-run``: print the resolved settings as one JSON object and stop; nothing is written or trained.
- ``--workers N`` | ``--ray ADDRESS`` (long jobs, :func:`add_scale`): their units on a Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["HELP", "add_command", "add_common", "add_scale", "default_threads", "idle_cpus", "physical_cores",
           "prepare", "resolve_device", "claim_out", "release_claims", "start_run", "emit", "handle_error",
           "progress_enabled", "USER_ERRORS"]

# one-line help of every command, here so that ``diffmem --help`` lists them without importing their modules
HELP = {
    "demo": "run the main job on the embedded default world and write a report",
    "train": "train an embedded world (or a folder/.npz of images) on CPU",
    "world-report": "measure how much a trained world memorizes its planted pairs",
    "theory": "closed-form theory lab of Ye et al. 2025 (loss gap, scores, sweeps)",
    "similarity": "copy criteria, duplicate counts and the digits feature classifier",
    "analyze": "run a paper's analyses (kim: how diffusion models memorize)",
    "prune": "memorization-reducing head pruning of a world's or a diffusers DiT/PixArt (Ye et al., 2025)",
    "detect": "compare memorization detectors on one ground truth, with measured cost",
    "audit": "rank prompts by memorization: cheap screen, expensive escalation",
    "mitigate": "apply and evaluate memorization mitigations",
    "report": "render a self-contained report.html from a run folder",
}

SAMPLE_SECONDS = 0.2  # /proc/stat sampling window of the idleness measurement


def _plain(doc: str | None) -> str:
    """A docstring without reST markup, for ``--help``."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc or "")
    return doc.replace("``", "")


def add_command(sub, name: str, doc: str | None) -> argparse.ArgumentParser:
    """The sub-parser of command ``name`` (its help from :data:`HELP`, its description the module docstring)."""
    return sub.add_parser(name, help=HELP[name], description=_plain(doc),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def add_common(p, *, out: str | None = "required", threads: bool = True, model: tuple[str, ...] = (),
               seed: int | None = 0, steps: int | str | None = None, dry_run: bool = True) -> None:
    """Add the shared options to ``p``: ``--out`` (``"required"``, a default folder, or None for none), ``--threads``,
    those of ``model`` among ``device``, ``dtype``, ``batch-size``, ``--seed`` (its default; None: no flag),
    ``--steps`` (its default or a help suffix; None: no flag), ``--dry-run``, and always ``-q``/``-v``/``--json``/
    ``--no-progress``."""
    if out == "required":
        p.add_argument("--out", required=True, type=Path, metavar="DIR", help="exact output folder (created if "
                       "missing; reused to resume)")
    elif out is not None:
        p.add_argument("--out", default=Path(out), type=Path, metavar="DIR",
                       help="exact output folder (default: %(default)s; reused to resume)")
    if threads:
        p.add_argument("--threads", type=_positive, metavar="N",
                       help="torch CPU threads (default: idle physical cores, 1 on a busy machine)")
    unknown = set(model) - {"device", "dtype", "batch-size"}
    if unknown:
        raise ValueError(f"unknown model options {sorted(unknown)}")
    if "device" in model:
        p.add_argument("--device", default="auto", help="torch device of the model: auto (CUDA if present), cpu, "
                       "cuda, cuda:N (default: %(default)s)")
    if "dtype" in model:
        p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"),
                       help="model weights dtype; float16/bfloat16 are for GPUs (default: %(default)s)")
    if "batch-size" in model:
        p.add_argument("--batch-size", type=_positive, metavar="N", help="samples per model call; lower it when "
                       "GPU memory runs out (analyze: seeds per forward, same records up to round-off)")
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed, metavar="N", help="first seed (default: %(default)s)")
    if steps is not None:
        extra = f"default: {steps}" if isinstance(steps, int) else steps
        p.add_argument("--steps", type=_positive, default=steps if isinstance(steps, int) else None, metavar="N",
                       help=f"sampling steps ({extra})")
    if dry_run:
        p.add_argument("--dry-run", action="store_true", help="print the resolved settings and stop; writes nothing")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no progress, no tables: only the summary")
    g.add_argument("-v", "--verbose", action="store_true", help="tracebacks of internal errors")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_scale(p) -> None:
    """Add ``--workers N`` (a local Ray cluster of N workers) and ``--ray ADDRESS`` (join a running one): where a
    long job's units run (:mod:`diffmem.executor`). Neither: in this process, and Ray is not imported."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=_positive, metavar="N", help="run the units on a local Ray cluster of N "
                   "workers, each holding the model once (needs the ray extra; results equal one process's)")
    g.add_argument("--ray", metavar="ADDRESS", help="run the units on the running Ray cluster at ADDRESS (auto: "
                   "the local one); one worker per GPU, else per CPU")


# --- threads ----------------------------------------------------------------------------------------------------

def physical_cores() -> int:
    """Distinct (package, core) pairs of the CPUs this process may run on (/proc/cpuinfo); logical CPUs if unknown."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return len(allowed)
    cores, cpu, pkg = set(), None, "0"
    for line in text.splitlines() + [""]:
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor":
            cpu = int(val)
        elif key == "physical id":
            pkg = val
        elif key == "core id" and cpu in allowed:
            cores.add((pkg, val))
    return len(cores) or len(allowed)


def _cpu_times() -> tuple[float, float] | None:
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]), idle


def idle_cpus(window: float = SAMPLE_SECONDS) -> float | None:
    """Idle logical CPUs over ``window`` seconds: the idle share of all CPU time in /proc/stat times the CPU count
    (this process sleeps while sampling, so it does not count itself). None where /proc/stat is unreadable."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(window)
    b = _cpu_times()
    total = b[0] - a[0]
    if total <= 0:
        return None
    return (b[1] - a[1]) / total * (os.cpu_count() or 1)


def default_threads() -> int:
    """Threads when ``--threads`` is not given: ``OMP_NUM_THREADS`` if set, else one per idle physical core —
    floor(idle logical CPUs × physical/logical), at least 1, at most the physical cores. A busy machine gets 1:
    oversubscribed torch threads spin and wait for each other (a 2-core machine shared with one busy process ran
    4× slower with torch's default of 2 threads than with 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    phys, idle = physical_cores(), idle_cpus()
    if idle is None:
        return 1
    return max(1, min(phys, int(idle * phys / (os.cpu_count() or phys) + 1e-9)))


# --- per-run setup ----------------------------------------------------------------------------------------------

def _check_out(out: Path) -> None:
    """``--out`` must be a folder or creatable as one, and writable — checked before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file; give a folder (it is created if missing)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(out)!r} is not writable (no write permission on {str(probe)!r}); "
                         "choose another folder")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; other names unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str) -> None:
    if device == "auto":
        return
    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this torch {torch.__version__} sees no CUDA GPU (CPU-only build or "
                             "no driver); use --device cpu")
        n = int(device.split(":")[1]) if ":" in device else 0
        if n >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")


def prepare(args) -> None:
    """Once per command, before any work: check ``--out`` and ``--device``, set torch's threads. A run that writes
    (not ``--dry-run``) then claims ``--out``: a second process given the same folder is refused in one line, unless
    the command merges concurrent writers itself (``out_shared``, e.g. ``prune``'s per-method rows)."""
    if getattr(args, "out", None) is not None:
        _check_out(Path(args.out))
    if getattr(args, "device", None) is not None:
        _check_device(args.device)
    if hasattr(args, "threads") and not getattr(args, "dry_run", False):
        import torch

        args.threads = args.threads or default_threads()
        torch.set_num_threads(args.threads)
    if getattr(args, "out", None) is not None and not getattr(args, "dry_run", False):
        claim_out(args.out, shared=getattr(args, "out_shared", False))


_CLAIMED: list[Path] = []  # folders claimed by :func:`claim_out`, released by :func:`release_claims`


def release_claims() -> None:
    """Release the folders this command claimed (the command has ended; the next one in this process may write
    them)."""
    from diffmem.io import release_out_dir

    while _CLAIMED:
        release_out_dir(_CLAIMED.pop())


def claim_out(out, *, shared: bool = False) -> Path:
    """Create the output folder ``out`` and, unless ``shared``, hold it for this process (one line if taken)."""
    from diffmem.io import check_out_dir, claim_out_dir

    out = check_out_dir(out) if shared else claim_out_dir(out)
    if not shared:
        _CLAIMED.append(out)
    return out


def start_run(out, finished: tuple[str, ...]) -> None:
    """Just before a job's first write, its inputs checked (a refused rerun changes nothing): delete the temporary
    files a hard kill left in ``out`` and rename the ``finished`` results of an earlier run to ``*.stale``, so a
    killed rerun never leaves an old, complete-looking result beside new files."""
    from diffmem.io import mark_stale, remove_stale_tmp

    remove_stale_tmp(out)
    mark_stale(out, finished)


def progress_enabled(args) -> bool:
    """Progress bars unless ``--no-progress``, ``-q`` or ``--json``."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False) or getattr(args, "json", False))


# --- output -----------------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, default=str)
    return str(v)


def _finite(obj):
    """Non-finite floats as null: strict JSON has no NaN or Infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def emit(args, summary: dict, table=None) -> int:
    """The one stdout summary: ``--json`` or ``--dry-run`` → one JSON object (a dry run's resolved settings are
    always JSON, for scripts to check); else ``table`` (a callable printing a table, skipped
    with ``-q``) then one ``key value`` line per summary entry. Returns 0."""
    if getattr(args, "json", False) or getattr(args, "dry_run", False):
        print(json.dumps(_finite({"command": args.command, **summary}), default=str, allow_nan=False))
        return 0
    if table is not None and not getattr(args, "quiet", False):
        table()
    width = max((len(k) for k in summary), default=0)
    for k, v in summary.items():
        print(f"{k:{width}s}  {_fmt(v)}")
    return 0


# --- errors -----------------------------------------------------------------------------------------------------

# user-caused failures: bad values (a missing model file is a ValueError too), missing or unwritable paths
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _one_line(err: BaseException) -> str:
    if isinstance(err, PermissionError):
        return f"no permission to access {str(err.filename)!r}; fix its permissions or choose another path"
    if isinstance(err, FileNotFoundError):
        return f"{str(err.filename)!r} does not exist; check the path" if err.filename else " ".join(str(err).split())
    if isinstance(err, IsADirectoryError | NotADirectoryError | FileExistsError):
        return f"{str(err.filename or err)!r}: {err.strerror or err}; choose another path"
    return " ".join(str(err).split()) or type(err).__name__


def handle_error(args, err: BaseException) -> int:
    """A user-caused failure → one line on stderr, exit 2; Ctrl-C → 130; anything else → one line and exit 1, the
    traceback only with ``-v``."""
    cmd = getattr(args, "command", None) or "diffmem"
    if isinstance(err, KeyboardInterrupt):
        print(f"diffmem {cmd}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if isinstance(err, USER_ERRORS):
        print(f"diffmem {cmd}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    if getattr(args, "verbose", False):
        raise err
    print(f"diffmem {cmd}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with -v for the "
          "traceback)", file=sys.stderr)
    return 1
