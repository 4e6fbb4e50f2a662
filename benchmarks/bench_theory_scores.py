"""Benchmark: the streamed (chunked, running log-sum-exp) empirical score against a direct full-matrix softmax.

Run:  .venv/bin/python benchmarks/bench_theory_scores.py            (~1 min on 2 CPU cores)
      .venv/bin/python benchmarks/bench_theory_scores.py --quick    (~10 s)

Workload: empirical score of n training points in d = 32 at B query points, alpha_bar = e^-1 (posterior spread
over many points), float64 (as the loss-gap estimator uses it). Direct: one [B, n] logit matrix, softmax, one
matmul. Streamed: GaussianMixture.empirical(X).score with its default chunk (at most 2^22 logits held at once).
Both run in every repeat, alternating, after a warm-up. Printed per n: median wall times, the ratio
streamed/direct (goal <= 1.5, the price of bounded memory), the logit memory each side holds and max |difference|.

Threads: 1 by default (on shared cores extra OpenMP threads slow small ops by orders of magnitude); ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffmem.mixtures import GaussianMixture


def direct_score(X: torch.Tensor, x: torch.Tensor, ab: float) -> torch.Tensor:
    logits = -torch.cdist(x, ab**0.5 * X) ** 2 / (2 * (1 - ab))
    return (ab**0.5 * torch.softmax(logits, 1) @ X - x) / (1 - ab)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, d, ab = 500, 32, float(torch.exp(torch.tensor(-1.0)))
    ns, repeats = ((10_000, 50_000) if args.quick else (10_000, 50_000, 100_000)), (3 if args.quick else 5)
    g = torch.Generator().manual_seed(0)
    print(f"B = {B}, d = {d}, float64, {args.threads} thread(s)")
    for n in ns:
        X = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
        x = ab**0.5 * X[:B] + (1 - ab) ** 0.5 * torch.randn(B, d, generator=g, dtype=torch.float64)
        emp = GaussianMixture.empirical(X)
        emp.score(x[:10], ab), direct_score(X, x[:10], ab)  # warm-up
        times: dict[str, list[float]] = {"streamed": [], "direct": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            s_stream = emp.score(x, ab)
            t1 = time.perf_counter()
            s_direct = direct_score(X, x, ab)
            times["streamed"].append(t1 - t0)
            times["direct"].append(time.perf_counter() - t1)
        med = {k: statistics.median(v) for k, v in times.items()}
        chunk = max(1, 2**22 // B)
        print(f"n = {n:>7}: streamed {med['streamed']:.3f} s, direct {med['direct']:.3f} s, "
              f"ratio {med['streamed'] / med['direct']:.2f}; logits held: streamed {B * min(chunk, n) * 8 / 2**20:.0f}"
              f" MiB, direct {B * n * 8 / 2**20:.0f} MiB; max |diff| {float((s_stream - s_direct).abs().max()):.1e}")


if __name__ == "__main__":
    main()
