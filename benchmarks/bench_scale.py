"""Benchmark of the Ray executor: speed-up of 2 workers over 1 for ``detect`` on digits-bench, and Ray's overhead
per unit, measured side by side in one run.

Run:  .venv/bin/python benchmarks/bench_scale.py            (all 790 prompts of digits-bench, ~4 min on 2 idle cores)
      .venv/bin/python benchmarks/bench_scale.py --quick    (128 prompts, ~1 min)

Workload: the embedded ``digits-bench`` world (its shipped checkpoint, 50-step grid), its first P prompts,
``wen-step1`` and ``wen-all`` at n = 1, the planted label, chunks of 16 prompts (the harness's default), one torch
thread per process. Three runs of :func:`~diffmem.detectors.harness.run_detection` into fresh folders, in this
order: serial (this process), Ray with 1 worker, Ray with 2 workers — one local cluster of 2 CPUs for both Ray runs,
started before the clock. Each Ray run's time excludes starting its workers (each builds the subject once; printed
apart). The 2-worker records are checked bitwise against the serial ones.

Overhead per unit: ``U`` no-op tasks (returning ``{}``) sent through each executor and their results collected —
serial vs 2 Ray workers; (Ray − serial) / U is what Ray adds to a unit. The same no-op units through
:func:`~diffmem.executor.run_units` (each unit's file written atomically by the driver) are printed beside it.

The load of the machine (``os.getloadavg``, and the CPUs other processes used just before) is printed before and
after: on a shared machine the speed-up is bounded by the idle cores, not by Ray.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from _machine import busy_cpus

from diffmem.cli.detect import build_subject
from diffmem.detectors.harness import run_detection
from diffmem.executor import RayExecutor, SerialExecutor, Unit, run_units

DETECTORS = ("wen-step1", "wen-all")
GOAL = 1.7


def bench_subject(n_prompts: int):
    """digits-bench restricted to its first ``n_prompts`` prompts (module-level: each worker builds it once)."""
    subject = build_subject("digits-bench", None, None, 50, False)
    return subject.select(ids=[p.id for p in subject.prompts[:n_prompts]])


def noop(i: int, state) -> dict:
    return {}


def load() -> str:
    busy = busy_cpus()
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min); other processes used {busy:.2f} CPUs just now"


def detect_seconds(subject, executor, out: Path) -> tuple[float, bytes, float]:
    """Seconds of the run, its scores.csv and the denoiser rows it counted (NFE + JVP + VJP)."""
    start = time.perf_counter()
    run = run_detection(subject, DETECTORS, n_gen=(1,), labels=("planted",), out=out, chunk_size=16, n_boot=200,
                        executor=executor)
    rows = sum((r.nfe_per_generation + r.jvp_per_generation + r.vjp_per_generation) * len(subject.prompts)
               for r in run.summary.rows)
    return time.perf_counter() - start, (out / "scores.csv").read_bytes(), rows


def dispatch_seconds(executor, n: int) -> float:
    """Seconds to send ``n`` no-op tasks and get their results back (no file written)."""
    start = time.perf_counter()
    for _ in executor.imap([partial(noop, i) for i in range(n)], None):
        pass
    return time.perf_counter() - start


def noop_seconds(executor, root: Path, n: int) -> float:
    units = [Unit(root / f"{i:05d}.json", {"unit": i}, partial(noop, i)) for i in range(n)]
    start = time.perf_counter()
    run_units(units, {"computed": 0, "reused": 0, "recomputed": 0}, executor=executor)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prompts", type=int, help="first P prompts of digits-bench (default: all; quick: 128)")
    p.add_argument("--noop-units", type=int, default=400)
    args = p.parse_args()
    import ray

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    n_prompts = args.prompts or (128 if args.quick else 10**9)
    recipe = partial(bench_subject, n_prompts)
    subject = recipe()
    units = 2 * -(-len(subject.prompts) // 16)
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs; detect on digits-bench: "
          f"{len(subject.prompts)} prompts, {', '.join(DETECTORS)}, n = 1, {units} units of 16 prompts")
    print("before:", load())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    root = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    secs, csv = {}, {}
    secs["serial"], csv["serial"], rows = detect_seconds(subject, SerialExecutor(), root / "serial")
    starts = {}
    for w in (1, 2):
        with RayExecutor(recipe, workers=w) as ex:
            t = time.perf_counter()
            ex.start()
            starts[w] = time.perf_counter() - t
            secs[f"ray-{w}"], csv[f"ray-{w}"], _ = detect_seconds(subject, ex, root / f"ray{w}")
    assert csv["ray-1"] == csv["serial"] == csv["ray-2"], "Ray's records differ from the serial run's"
    n = args.noop_units
    noop_s, send_s = noop_seconds(SerialExecutor(), root / "noop-serial", n), dispatch_seconds(SerialExecutor(), n)
    with RayExecutor(partial(dict), workers=2) as ex:
        ex.start()
        noop_r, send_r = noop_seconds(ex, root / "noop-ray", n), dispatch_seconds(ex, n)
    print("after: ", load())
    for k, v in secs.items():
        print(f"detect {k:7s} {v:8.2f} s  ({v / units:.3f} s per unit)"
              + (f"; workers started in {starts[int(k[-1])]:.1f} s (not counted)" if k.startswith("ray") else ""))
    s_ray, s_serial = secs["ray-1"] / secs["ray-2"], secs["serial"] / secs["ray-2"]
    print(f"speed-up of 2 workers over 1: {s_ray:.2f}x (over the serial run: {s_serial:.2f}x; goal >= {GOAL}x) — "
          f"{'met' if s_ray >= GOAL else 'NOT met'}; records bitwise equal: yes")
    per_unit = secs["serial"] / units
    print(f"one process, one thread: {rows / secs['serial']:.0f} denoiser rows (NFE) per second "
          f"({rows} rows in {secs['serial']:.1f} s)")
    print(f"no-op tasks ({n}), sent and returned: serial {1e3 * send_s / n:.3f} ms, 2 Ray workers "
          f"{1e3 * send_r / n:.3f} ms per task; Ray adds {1e3 * (send_r - send_s) / n:.2f} ms per unit "
          f"({100 * (send_r - send_s) / n / per_unit:.2f} % of a detect unit here)")
    print(f"no-op units ({n}) through run_units (each file written): serial {1e3 * noop_s / n:.2f} ms, 2 Ray workers "
          f"{1e3 * noop_r / n:.2f} ms per unit")
    ray.shutdown()


if __name__ == "__main__":
    main()
