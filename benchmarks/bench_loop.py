"""Benchmark of ``diffmem.sample``: recording overhead and peak memory of a recorded run.

Run:  .venv/bin/python benchmarks/bench_loop.py            (full, ~1 min on 2 CPU cores)
      .venv/bin/python benchmarks/bench_loop.py --quick    (~20 s)

Workload (an SD-sized latent batch: a 50-step 4x64x64 batch must fit in memory): x_T [B, 4, 64, 64]
(B = 4; quick: B = 2), 50 DDIM steps (quick: 20) on ``DiscreteSchedule.named("scaled_linear")`` with
``discrete_grid(.., steps_offset=1)``, classifier-free guidance 7.5 with ``Cond(c, null)``. The denoiser is a small
eps-prediction conv net (3 convs, 64 channels, timestep and class embeddings added), eval mode, fp32, 2 threads: a
cheap but real model, so the overhead ratio compares recording against actual compute.

(a) Recording overhead: wall time of ``sample`` with the default ``Recorder()`` over that with ``Recorder(keep=())``,
    same denoiser, x_T and grid; both settings run in every repeat, in alternating order, after a warm-up; the
    median of the per-repeat ratios is reported (goal <= 1.05).
(b) Peak memory: each recorder setting runs once in a fresh subprocess (this script with ``--_memory-child``);
    the peak is ``ru_maxrss`` after the run minus ``ru_maxrss`` just before sampling (after model build and a
    warm-up on the same shapes). The exact bytes held by the returned Trajectory's tensors are printed beside it.

The allocator (glibc) is pinned by default, differently for the two parts; ``--malloc-default`` leaves it alone:

* timing: glibc's dynamic thresholds hand the conv activations (~8 MiB, freed every step) back to the kernel and
  fault them in again; that churn (~500k minor faults, more than half the wall time of a run here) switches on and
  off from run to run and swamps a few-percent difference. ``mallopt`` keeps freed memory in the heap (as jemalloc
  or a caching allocator would), so what is left is the model's compute plus the recording's own work.
* memory: with a small fixed mmap threshold every large buffer is its own mapping and RSS follows live memory, so
  the peak is reproducible to ~0.1 MiB instead of +-15 MiB.

The machine should be otherwise idle: with 2 threads on 2 cores, any other busy process inflates and scatters the
timings (OpenMP threads then wait on each other); the ratio stays comparable because the settings are interleaved.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch
from _machine import busy_cpus
from torch import nn

import diffmem
from diffmem import Cond, DiscreteSchedule, Recorder, discrete_grid
from diffmem.denoiser import Denoiser
from diffmem.sampling.trajectory import TENSOR_FIELDS

THREADS = 2
CHANNELS, SIZE, WIDTH, CLASSES = 4, 64, 64, 10
GUIDANCE = 7.5
GOAL = 1.05

# name -> Recorder; the order is the order of the memory table
SETTINGS = {
    "keep=()": lambda: Recorder(keep=()),
    "default": lambda: Recorder(),
    "every=5": lambda: Recorder(every=5),
    "dtype=float16": lambda: Recorder(dtype=torch.float16),
    "keep=('x0_hat',)": lambda: Recorder(keep=("x0_hat",)),
}
LABELS = {"default": "Recorder()", "dtype=float16": "Recorder(dtype=torch.float16)"}


# --- the model -------------------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps [B] -> [B, dim] (Ho et al., 2020 / Vaswani et al., 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ConvNet(nn.Module):
    """conv(4->64) + t-emb + class-emb -> SiLU -> conv(64->64) -> SiLU -> conv(64->4), residual: an eps-predictor."""

    def __init__(self, channels: int = CHANNELS, width: int = WIDTH, classes: int = CLASSES):
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(classes + 1, width)  # last row = the null class
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():  # small output layer: eps stays O(1), so 50 guided steps stay finite
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        emb = self.t_mlp(timestep_embedding(t, self.width)) + self.class_emb(c)
        h = self.conv_in(x) + emb[:, :, None, None]
        h = self.conv_mid(nn.functional.silu(h))
        return x + self.conv_out(nn.functional.silu(h))  # eps ~ x_t plus a learned correction


class ConvDenoiser(Denoiser):
    prediction_type = "epsilon"
    name = "bench-convnet"

    def __init__(self, net: nn.Module, schedule: DiscreteSchedule):
        self.net, self.schedule = net.eval(), schedule

    def model_output(self, x_t, t, c):
        return self.net(x_t, t.to(x_t.device), c)


def build(batch: int, steps: int):
    """The denoiser, x_T, grid and conditioning of the workload (deterministic)."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    schedule = DiscreteSchedule.named("scaled_linear")
    den = ConvDenoiser(ConvNet(), schedule)
    grid = discrete_grid(schedule, steps, steps_offset=1)
    x_T = diffmem.SeededNoise(list(range(batch))).randn((CHANNELS, SIZE, SIZE))
    cond = Cond(torch.arange(batch) % CLASSES, torch.full((batch,), CLASSES))  # null = the extra class row
    return den, x_T, grid, cond


def run(den, x_T, grid, cond, recorder):
    return diffmem.sample(den, x_T, grid, cond, solver="ddim", guidance=GUIDANCE, recorder=recorder)


def trajectory_bytes(traj) -> tuple[int, int]:
    """(bytes of all tensor fields, bytes of the [S, B, ...] fields) of a Trajectory: sum of numel * element_size."""
    total = per_step = 0
    for f in dataclasses.fields(traj):
        v = getattr(traj, f.name)
        if isinstance(v, torch.Tensor):
            n = v.numel() * v.element_size()
            total += n
            per_step += n if f.name in TENSOR_FIELDS else 0
    return total, per_step


# --- process-level memory helpers -----------------------------------------------------------------------------

def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


def vm_hwm_bytes() -> int | None:
    """VmHWM of /proc/self/status: the mm's own peak RSS, without the floor ru_maxrss may inherit through exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def reset_peak_rss() -> bool:
    """Reset the mm's peak RSS (VmHWM) to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pin_malloc_for_timing() -> bool:
    """Keep freed memory in glibc's heap (fixed 32 MiB mmap threshold, 1 GiB trim threshold); False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


# every allocation above 64 KiB gets its own mapping, returned on free: RSS follows live memory (read at startup)
MEMORY_CHILD_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# --- (b) memory: one setting per fresh process -----------------------------------------------------------------

def memory_child(setting: str, batch: int, steps: int) -> None:
    den, x_T, grid, cond = build(batch, steps)
    warm = discrete_grid(den.schedule, 2, steps_offset=1)
    run(den, x_T, warm, cond, Recorder(keep=()))  # warm-up on the same shapes, recording nothing
    # A spike before this point (import, first-call kernel setup) could exceed the recorded run's own peak and hide
    # it: reset the high-water mark to the current RSS, then warm up once more so that "before" again includes one
    # step's transient activations. after - before is then what the recording adds.
    reset = reset_peak_rss()
    run(den, x_T, warm, cond, Recorder(keep=()))
    before = maxrss_bytes()
    traj = run(den, x_T, grid, cond, SETTINGS[setting]())
    after, hwm = maxrss_bytes(), vm_hwm_bytes()
    total, per_step = trajectory_bytes(traj)
    print(json.dumps({"setting": setting, "reset": reset, "before": before, "after": after, "vm_hwm": hwm,
                      "traj_bytes": total, "per_step_bytes": per_step, "recorded_steps": traj.num_recorded,
                      "finite": bool(torch.isfinite(traj.x_0).all())}))


def measure_memory(batch: int, steps: int, malloc_default: bool) -> list[dict]:
    env = dict(os.environ) if malloc_default else {**os.environ, **MEMORY_CHILD_MALLOC}
    rows = []
    for setting in SETTINGS:
        cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", setting,
               "--batch", str(batch), "--steps", str(steps)]
        if os.path.exists("/bin/sh"):
            # Not spawned directly: exec() copies the spawning process's peak RSS into the new program's ru_maxrss
            # (Linux keeps it as a floor in signal->maxrss), which would pin the child's "before" and "after" to
            # this process's peak. A shell that forks the child (the trailing "exit" keeps it from exec'ing in
            # place) starts it from a small fresh process instead.
            cmd = ["/bin/sh", "-c", shlex.join(cmd) + "; exit $?"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"memory child for {setting} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


# --- (a) overhead: interleaved timing in this process ----------------------------------------------------------

def measure_overhead(batch: int, steps: int, repeats: int, budget_s: float, min_repeats: int = 5) -> dict:
    """Up to ``repeats`` interleaved pairs; stops early (after ``min_repeats``) once ``budget_s`` is spent."""
    den, x_T, grid, cond = build(batch, steps)
    timed = {"recorded": Recorder(), "unrecorded": Recorder(keep=())}

    def once(name: str) -> tuple[float, int]:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        traj = run(den, x_T, grid, cond, timed[name])
        dt = time.perf_counter() - t0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        del traj
        return dt, faults

    for name in timed:  # warm-up: one full run of each setting
        once(name)
    times = {name: [] for name in timed}
    faults = {name: [] for name in timed}
    ratios = []
    start = time.perf_counter()
    for r in range(repeats):
        if r >= min_repeats and time.perf_counter() - start > budget_s:
            break
        order = ("recorded", "unrecorded") if r % 2 == 0 else ("unrecorded", "recorded")
        got = {name: once(name) for name in order}
        for name in timed:
            times[name].append(got[name][0])
            faults[name].append(got[name][1])
        ratios.append(got["recorded"][0] / got["unrecorded"][0])
    check = run(den, x_T, grid, cond, Recorder(keep=()))
    return {"times": times, "faults": faults, "ratios": ratios, "finite": bool(torch.isfinite(check.x_0).all()),
            "x0_absmax": float(check.x_0.abs().max())}


# --- report ----------------------------------------------------------------------------------------------------

def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def report_overhead(ov: dict, steps: int, pinned: bool) -> None:
    repeats = len(ov["ratios"])
    print(f"(a) recording overhead: {repeats} repeats, both settings in each (alternating order), after a warm-up; "
          f"malloc {'pinned (mallopt)' if pinned else 'glibc default'}")
    print(f"    {'setting':<30}{'median s':>10}{'q1 s':>9}{'q3 s':>9}{'min s':>9}{'faults/run':>12}")
    for name, rec in (("recorded", "Recorder()"), ("unrecorded", "Recorder(keep=())")):
        ts = ov["times"][name]
        q1, q3 = quartiles(ts)
        print(f"    {name + ' ' + rec:<30}{statistics.median(ts):>10.3f}{q1:>9.3f}{q3:>9.3f}{min(ts):>9.3f}"
              f"{statistics.median(ov['faults'][name]):>12.0f}")
    ratio = statistics.median(ov["ratios"])
    q1, q3 = quartiles(ov["ratios"])
    per_step_ms = 1e3 * statistics.median(ov["times"]["unrecorded"]) / steps
    print(f"    per-repeat ratios: {' '.join(f'{r:.3f}' for r in ov['ratios'])}")
    print(f"    ratio IQR {q1:.3f}-{q3:.3f}; unrecorded {per_step_ms:.1f} ms/step; x_0 finite: {ov['finite']} "
          f"(max |x_0| {ov['x0_absmax']:.3g})")
    verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
    print(f"recording overhead (recorded/unrecorded, median of {repeats}): {ratio:.3f}  (goal <= {GOAL})  {verdict}")


def report_memory(mem: list[dict], malloc_default: bool) -> None:
    print("(b) peak memory of one recorded run, each setting in a fresh process")
    print("    peak = ru_maxrss after sample() - ru_maxrss just before (after model build + warm-up); malloc "
          + ("glibc default" if malloc_default else "MALLOC_MMAP_THRESHOLD_=65536"))
    print(f"    {'recorder':<32}{'steps kept':>11}{'peak MiB':>10}{'traj MiB':>10}{'[S,B,..] MiB':>14}"
          f"{'peak/traj':>11}")
    for r in mem:
        peak = r["after"] - r["before"]
        label = LABELS.get(r["setting"], f"Recorder({r['setting']})")
        print(f"    {label:<32}{r['recorded_steps']:>11}{mib(peak):>10}{mib(r['traj_bytes']):>10}"
              f"{mib(r['per_step_bytes']):>14}{peak / r['traj_bytes']:>11.2f}")
    print(f"    traj MiB: exact bytes of all tensors of the returned Trajectory (sum numel*element_size); "
          f"[S,B,..]: its fields {', '.join(TENSOR_FIELDS)}")
    print(f"    ru_maxrss before sampling: {', '.join(mib(r['before']) for r in mem)} MiB; "
          f"all x_0 finite: {all(r['finite'] for r in mem)}")
    floored = [r["setting"] for r in mem if r["vm_hwm"] is not None and r["vm_hwm"] + 2**20 < r["after"]]
    if floored:
        print(f"    WARNING: ru_maxrss above VmHWM for {floored}: a floor inherited through exec may hide the peak")
    if not all(r["reset"] for r in mem):
        print("    NOTE: could not reset the peak RSS (/proc/self/clear_refs); an earlier spike may hide the peak")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~20 s version: B=2, 20 steps, fewer repeats")
    p.add_argument("--batch", type=int, default=None, help="batch size B (default 4; quick 2)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; quick 20)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats, each runs both settings "
                   "(default 21, quick 15; fewer, but at least 5, once 75 s / 10 s of timing are spent)")
    p.add_argument("--malloc-default", action="store_true", help="leave glibc malloc at its defaults in both parts")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batch = a.batch or (2 if a.quick else 4)
    steps = a.steps or (20 if a.quick else 50)
    if a.memory_child is not None:
        memory_child(a.memory_child, batch, steps)
        return
    repeats = a.repeats or (15 if a.quick else 21)
    t_start, busy = time.perf_counter(), busy_cpus()
    pinned = False if a.malloc_default else pin_malloc_for_timing()

    torch.set_num_threads(THREADS)
    print(f"diffmem {diffmem.__version__} | torch {torch.__version__} | python {platform.python_version()} | "
          f"{torch.get_num_threads()} threads | {os.cpu_count()} CPUs | busy before start: "
          f"{'?' if busy is None else f'{busy:.2f}'} CPUs")
    print(f"workload: x_T [{batch}, {CHANNELS}, {SIZE}, {SIZE}] fp32, {steps} DDIM steps, scaled_linear "
          f"(steps_offset=1), CFG w={GUIDANCE} with Cond(c, null); denoiser: 3-conv {WIDTH}-ch eps-net"
          f"{'  [quick]' if a.quick else ''}")
    if busy is not None and busy > 0.2:
        print(f"WARNING: other processes kept {busy:.2f} CPUs busy before the start: they compete for the cores, "
              "timings are inflated and noisier")

    mem = measure_memory(batch, steps, a.malloc_default)  # first: children need no idle CPU, timing does
    ov = measure_overhead(batch, steps, repeats, budget_s=10.0 if a.quick else 75.0)
    print()
    report_overhead(ov, steps, pinned)
    print()
    report_memory(mem, a.malloc_default)
    print(f"\ntotal wall time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
