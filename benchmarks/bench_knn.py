"""Benchmark of exact nearest-neighbour retrieval: memorization-ratio throughput and peak memory.

Run:  .venv/bin/python benchmarks/bench_knn.py            (full: several minutes on 2 busy CPU cores)
      .venv/bin/python benchmarks/bench_knn.py --quick    (2k queries x 10k refs, ~30 s)

(a) Throughput. 10k queries x 50k references (quick: 2k x 10k), standard-normal float32, dimension 64 and 3072.
    Timed side by side in every repeat, in rotating order after a warm-up:
      * ``mm``: one plain ``torch.mm(queries, refs.T)`` of the same shapes (a fresh N x M output each call);
      * ``mm_out``: the same into a preallocated output (pure compute, no page faults: the harder target);
      * ``nn_ratio``: ``diffmem.similarity.criteria.nn_ratio(queries, refs)`` -- the whole memorization-ratio
        computation: duplicate collapsing, blocked exact top-2 search, exact re-ranking, the ratio;
      * ``nn_ratio_faiss``: the same with ``backend="faiss"`` when faiss-cpu is installed.
    Printed: the median time of each, and throughput ratios t(mm) / t(nn_ratio) (goal >= 0.5) and
    t(mm_out) / t(nn_ratio).
(b) Peak memory. nn_ratio on 50k x 10k items of dimension 3072 (both orientations: 50k queries against 10k refs,
    and 10k queries against 50k refs; quick: 5k x 2k), each in a fresh subprocess (this script with ``--_child``).
    Increase = the kernel's peak RSS (VmHWM, reset through /proc/self/clear_refs just before the call) minus the
    RSS just before (inputs already built, a tiny warm-up done).
    Printed beside it: the N x M float32 matrix a naive implementation would hold, and the stated bound
    ``max_memory`` (default 256 MiB of block scratch) + outputs + 64 MiB allocator slack.

Other processes share the 2 cores here, so absolute times are inflated and noisy; the ratios are comparable because
the methods are interleaved within each repeat.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from diffmem.similarity.criteria import nn_ratio
from diffmem.similarity.retrieval import DEFAULT_MAX_MEMORY

MiB = 2**20


def _data(n: int, m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


def _methods(q, r):
    out = torch.empty(len(q), len(r))
    methods = {"mm": lambda: torch.mm(q, r.T), "mm_out": lambda: torch.mm(q, r.T, out=out),
               "nn_ratio": lambda: nn_ratio(q, r)}
    try:
        import faiss  # noqa: F401

        methods["nn_ratio_faiss"] = lambda: nn_ratio(q, r, backend="faiss")
    except ImportError:
        pass
    return methods


def throughput(n: int, m: int, d: int, repeats: int) -> dict:
    q, r = _data(n, m, d)
    methods = _methods(q, r)
    wq, wr = q[:64], r[:1024]
    nn_ratio(wq, wr), torch.mm(wq, wr.T)  # warm-up: thread pools, allocator
    times: dict[str, list[float]] = {k: [] for k in methods}
    names = list(methods)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order
            t0 = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"n_queries": n, "n_refs": m, "dim": d, "repeats": repeats, "median_s": med,
           "ratio_vs_mm": med["mm"] / med["nn_ratio"], "ratio_vs_mm_out": med["mm_out"] / med["nn_ratio"]}
    if "nn_ratio_faiss" in med:
        row["faiss_ratio_vs_mm"] = med["mm"] / med["nn_ratio_faiss"]
    return row


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(n: int, m: int, d: int) -> None:
    q, r = _data(n, m, d)
    nn_ratio(q[:8], r[:64])  # warm-up
    try:  # reset the kernel's high-water mark (VmHWM) so the peak is this call's, not data generation's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, peak = _status_kib("VmRSS") * 1024, lambda: _status_kib("VmHWM") * 1024
    except OSError:  # no procfs reset: fall back to ru_maxrss (a lower bound on the call's increase)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nn_ratio(q, r)
    print(json.dumps({"peak_before": before, "peak_after": peak()}))


def memory(n: int, m: int, d: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", str(n), str(m), str(d)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    delta = res["peak_after"] - res["peak_before"]
    bound = DEFAULT_MAX_MEMORY + n * 2 * 8 * 2 + 64 * MiB  # block scratch + [N, 2] outputs + allocator slack
    return {"n_queries": n, "n_refs": m, "dim": d, "inputs_mib": (n + m) * d * 4 / MiB,
            "peak_rss_mib": res["peak_after"] / MiB, "peak_increase_mib": delta / MiB,
            "full_matrix_mib": n * m * 4 / MiB, "bound_mib": bound / MiB, "within_bound": delta <= bound}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--_child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        return child(*args._child)
    n, m, big, small = (2000, 10000, 5000, 2000) if args.quick else (10000, 50000, 50000, 10000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in (64, 3072):
        row = throughput(n, m, d, repeats=3 if d == 64 else 2)
        t = row["median_s"]
        print(f"(a) {n} queries x {m} refs, d={d}: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
        print(f"    throughput ratio t(mm)/t(nn_ratio) = {row['ratio_vs_mm']:.2f} (goal >= 0.5); "
              f"vs preallocated mm {row['ratio_vs_mm_out']:.2f}"
              + (f"; faiss {row['faiss_ratio_vs_mm']:.2f}" if "faiss_ratio_vs_mm" in row else ""))
    for nq, nr in ((big, small), (small, big)):
        row = memory(nq, nr, 3072)
        print(f"(b) nn_ratio {nq} queries x {nr} refs, d=3072: peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"(inputs {row['inputs_mib']:.0f} MiB); increase during the call {row['peak_increase_mib']:.0f} MiB; "
              f"bound {row['bound_mib']:.0f} MiB -> {'OK' if row['within_bound'] else 'EXCEEDED'}; "
              f"a full N x M matrix would be {row['full_matrix_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
