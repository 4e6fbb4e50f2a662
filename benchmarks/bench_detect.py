"""Benchmark of the detectors: NFE and time per prompt against one plain CFG forward, and the audit's throughput.

Run:  .venv/bin/python benchmarks/bench_detect.py            (60 prompts of digits-t2i, 5 repeats, ~2 min)
      .venv/bin/python benchmarks/bench_detect.py --quick    (16 prompts, 3 repeats, cheap detectors, ~20 s)

Workload: the embedded ``digits-t2i`` world (its shipped checkpoint), its first P manifest prompts, one generation
(seed 0), 50-step grid, w = 7.5, one thread (``--threads``) set explicitly before anything runs.

(a) Per detector: NFE per prompt counted by :class:`~diffmem.detectors.counting.CountingDenoiser` (plain, JVP and
    VJP rows apart) and wall seconds per prompt of ``detector.score`` on the P prompts, both as a ratio to *one plain
    CFG forward of the same batch* (the denoiser on x_T at the grid's first t, both branches, no loop, no
    recording: 2 NFE per prompt). The reference and every detector run in each repeat, interleaved; the median
    of the per-repeat time ratios is printed.
(b) Audit throughput: prompts/s of the audit's screen — ``wen-step1`` through the harness's checkpointed units
    (seeded x_T, the recorded loop on the first step, a unit file written per chunk) — over prompts/s of the same
    plain forward (goal >= 0.9), median over repeats; the whole audit (screen + top 10 % escalated to ``wen-all``,
    no samples) is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import busy_cpus

from diffmem.detectors import REGISTRY, make_detector
from diffmem.detectors.audit import audit
from diffmem.detectors.base import generation_seeds
from diffmem.detectors.counting import measure
from diffmem.detectors.harness import score_units
from diffmem.seeding import SeededNoise
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world

GOAL = 0.9


def plain_forward(subject, prompts) -> float:
    """Seconds of one CFG forward (both branches, batched) of ``prompts`` at x_T and the grid's first t."""
    cond = subject.cond(prompts)
    x_T = subject.x_T(SeededNoise([0] * len(prompts)))
    t = subject.grid.timesteps[0]
    with torch.no_grad():
        start = time.perf_counter()
        subject.denoiser(x_T, t, cond)
        return time.perf_counter() - start


def screen_seconds(subject, prompts, out: Path) -> float:
    start = time.perf_counter()
    score_units(subject, make_detector("wen-step1"), prompts, [0], out, chunk_size=64)  # the audit's default
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--detectors", help="comma-separated (default: all registered; quick: the wen-* ones)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    P, repeats = (16, 3) if args.quick else (60, 5)
    names = (args.detectors.split(",") if args.detectors else
             [n for n in sorted(REGISTRY) if not args.quick or n.startswith("wen-")])
    subject = world_subject(load_world("digits-t2i", progress=False))
    prompts = subject.prompts[:P]
    busy = busy_cpus()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {P} prompts, n = 1 (cross-generation "
          f"statistics: 2), "
          f"other load {busy:.1f} CPUs" if busy is not None else "")
    # a calibrated detector is fitted on non-planted prompts outside the scored ones, on seeds none of them uses
    negatives = [q for q in subject.prompts[P:] if q.kind == "nonplanted"][:8]
    dets = [make_detector(n).fit(subject, negatives, generation_seeds(4, 1000)) for n in names]
    seeds = {d.name: generation_seeds(d.min_generations) for d in dets}  # n = 1, or the fewest a statistic takes
    for d in dets[:1]:
        measure(d, subject, prompts[:2], seeds[d.name])  # warm-up
    plain_forward(subject, prompts)
    ratios = {d.name: [] for d in dets}
    costs, screen, ref_s = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            ref = plain_forward(subject, prompts)
            ref_s.append(ref)
            for d in dets:
                _, costs[d.name] = measure(d, subject, prompts, seeds[d.name])
                ratios[d.name].append(costs[d.name].seconds / ref)
            screen.append(screen_seconds(subject, prompts, Path(tmp) / f"s{r}") / plain_forward(subject, prompts))
        start = time.perf_counter()
        result = audit(subject.select(ids=[q.id for q in prompts]), out=Path(tmp) / "audit", samples=False)
        audit_s = time.perf_counter() - start
    ref = statistics.median(ref_s)
    print(f"(a) one plain CFG forward of {P} prompts: {1e3 * ref / P:.3f} ms per prompt (2 NFE per prompt)")
    print(f"    {'detector':<16}{'NFE/prompt':>11}{'JVP':>6}{'VJP':>6}{'NFE ratio':>11}{'time ratio':>12}"
          f"{'ms/prompt':>11}{'peak MB':>9}")
    rows = []
    for d in dets:
        c = costs[d.name]
        row = {"detector": d.name, "n_gen": len(seeds[d.name]), "nfe_per_prompt": c.nfe / P,
               "jvp_per_prompt": c.jvp / P, "vjp_per_prompt": c.vjp / P, "nfe_ratio": (c.nfe + c.jvp + c.vjp) / (2 * P),
               "time_ratio": statistics.median(ratios[d.name]), "ms_per_prompt": 1e3 * c.seconds / P,
               "peak_mem_mb": c.peak_mem_mb}
        rows.append(row)
        print(f"    {d.name:<16}{row['nfe_per_prompt']:>11g}{row['jvp_per_prompt']:>6g}{row['vjp_per_prompt']:>6g}"
              f"{row['nfe_ratio']:>11.1f}{row['time_ratio']:>12.2f}{row['ms_per_prompt']:>11.3f}"
              f"{row['peak_mem_mb']:>9.1f}")
    thr = 1 / statistics.median(screen)
    print(f"(b) audit screen throughput / plain forward = {thr:.2f} (goal >= {GOAL}); whole audit (top 10 % "
          f"to wen-all, {result.nfe['detection']} NFE): {P / audit_s:.1f} prompts/s vs {P / ref:.1f} plain")
    print(json.dumps({"prompts": P, "threads": args.threads, "plain_s": ref, "rows": rows,
                      "screen_throughput_ratio": thr, "audit_prompts_per_s": P / audit_s}))


if __name__ == "__main__":
    main()
