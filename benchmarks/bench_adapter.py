"""Benchmark: diffmem's loop + diffusers adapter against the stock pipeline call, on the same tiny model and steps.

Run:  .venv/bin/python benchmarks/bench_adapter.py             (~1 min on 2 CPU cores)
      .venv/bin/python benchmarks/bench_adapter.py --quick     (~15 s)
      .venv/bin/python benchmarks/bench_adapter.py --parity    (parity table only: max |ours - stock| per pipeline,
                                                                scheduler and prediction type; ~10 s)

Workload: the tiny random StableDiffusionPipeline of ``tests/diffusers_tiny.py`` (UNet 32/64 channels, 2-layer CLIP
text encoder, 8x8x4 latents), DDIM with SD's scheduler config, 2 prompts, CFG w = 7.5, fp32, CPU. ``--model pixart``
uses the tiny PixArt-α pipeline instead.

* stock: ``pipe(prompts, num_inference_steps=n, guidance_scale=7.5, generator=[one per seed], output_type="latent")``
  (progress bar disabled, which favours the stock side);
* ours, recorded: ``adapter.generate(adapter.prompts(prompts), seeds, n, guidance=7.5)``: prompt encoding, seeded
  x_T, the scheduler mapping and ``diffmem.sample`` with the default ``Recorder()`` (x_t, ε_c, ε_u, ε, x̂₀ at every
  step);
* ours, unrecorded: the same with ``Recorder(keep=())``.

All three run in every repeat, in rotating order, after a warm-up. Printed: the median over repeats of the per-repeat
ratios ours/stock (goal <= 1.0) and the median wall times. A parity line reports max |ours - stock| of the latents.
A last block repeats the timing with the denoising network's forward replaced by ``x -> 0.1 x`` on both sides: what
is left is each side's own per-step cost (scheduler step or loop, guidance, recording), free of the model's noise.

Threads: 1 by default. These models are so small that extra threads do not help, and on 2 shared cores 2 OpenMP
threads were seen to slow a 10-step call from 0.05 s to 20 s when another process held a core. ``--threads 2`` to
override. Other processes on the machine inflate both sides; the ratio stays comparable since the runs interleave.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _machine import busy_cpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared tiny-model builders

import diffmem  # noqa: E402
from diffmem import Recorder  # noqa: E402

GOAL = 1.0
PROMPTS, SEEDS, GUIDANCE = ["a photo of the cat", "a dog"], [0, 1], 7.5


def build(model: str):
    import diffusers_tiny as tiny

    if model == "sd":
        from diffmem.adapters.diffusers_sd import StableDiffusionAdapter

        pipe = tiny.tiny_sd_pipeline("ddim")
        return pipe, StableDiffusionAdapter(pipe), {}
    from diffmem.adapters.pixart import PixArtAdapter

    pipe = tiny.tiny_pixart_pipeline("ddim")
    return pipe, PixArtAdapter(pipe), {"use_resolution_binning": False, "clean_caption": False}


def runners(pipe, adapter, extra: dict, steps: int) -> dict:
    def stock():
        gens = [torch.Generator().manual_seed(s) for s in SEEDS]
        return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=GUIDANCE, generator=gens,
                    output_type="latent", **extra).images

    def ours(recorder):
        return lambda: adapter.generate(adapter.prompts(PROMPTS), SEEDS, steps, guidance=GUIDANCE,
                                        recorder=recorder).x_0

    return {"stock": stock, "recorded": ours(Recorder()), "unrecorded": ours(Recorder(keep=()))}


# --- parity table -----------------------------------------------------------------------------------------------

def _dit_latents(pipe, steps: int) -> torch.Tensor:
    """DiTPipeline has no output_type="latent": read the latents it hands to vae.decode."""
    from unittest import mock

    seen = {}
    decode = pipe.vae.decode

    def spy(z, *args, **kwargs):
        seen["z"] = z
        return decode(z, *args, **kwargs)

    gens = [torch.Generator().manual_seed(s) for s in SEEDS]
    with mock.patch.object(pipe.vae, "decode", spy):
        pipe(class_labels=[3, 7], guidance_scale=4.0, generator=gens, num_inference_steps=steps, output_type="pt")
    return seen["z"] * pipe.vae.config.scaling_factor


def parity_rows(steps: int):
    """(label, max |ours - stock|, max |stock|) for every pipeline/scheduler/prediction combination tested."""
    import diffusers_tiny as tiny
    from diffmem.adapters import DiTAdapter, PixArtAdapter, StableDiffusionAdapter

    def sd_row(label, pipe):
        runs = runners(pipe, StableDiffusionAdapter(pipe), {}, steps)
        ref = runs["stock"]()
        return label, (runs["recorded"]() - ref).abs().max().item(), ref.abs().max().item()

    for kind in tiny.SCHEDULERS:
        yield sd_row(f"SD 1.x eps, {kind}", tiny.tiny_sd_pipeline(kind))
        yield sd_row(f"SD 2.x-style v, {kind}", tiny.tiny_sd2_pipeline(kind))
        yield sd_row(f"SD 1.x eps, {kind}, MILD_BETAS", tiny.tiny_sd_pipeline(kind, betas=tiny.MILD_BETAS))
    pipe = tiny.tiny_dit_pipeline("ddim")
    dit = DiTAdapter(pipe)
    ref = _dit_latents(pipe, steps)
    got = dit.generate(dit.labels([3, 7]), SEEDS, steps, guidance=4.0).x_0
    yield "DiT (learned sigma), ddim, w=4", (got - ref).abs().max().item(), ref.abs().max().item()
    extra = {"use_resolution_binning": False, "clean_caption": False}
    for kind in tiny.SCHEDULERS:
        pipe = tiny.tiny_pixart_pipeline(kind)
        runs = runners(pipe, PixArtAdapter(pipe), extra, steps)
        ref = runs["stock"]()
        yield f"PixArt-alpha, {kind}", (runs["recorded"]() - ref).abs().max().item(), ref.abs().max().item()


def report_parity(steps: int) -> None:
    print(f"parity (our loop + adapter vs stock pipeline, fp32, {steps} steps, seeds {SEEDS}, CFG 7.5; DiT 4.0)")
    print(f"    {'pipeline, scheduler':<40}{'max abs err':>13}{'max |latent|':>14}{'err / max(1, |latent|)':>25}")
    for label, err, scale in parity_rows(steps):
        print(f"    {label:<40}{err:>13.3g}{scale:>14.3g}{err / max(1.0, scale):>25.3g}")


def stub_model(adapter) -> None:
    """Replace the network's forward by x -> 0.1 x (instance attribute; pipeline and adapter share the module)."""
    adapter.model.forward = lambda x, *args, **kwargs: (0.1 * x,)


def measure(fns: dict, repeats: int, budget_s: float, min_repeats: int = 5) -> dict:
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    times = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(repeats):
        if r >= min_repeats and time.perf_counter() - start > budget_s:
            break
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def report(times: dict, steps: int) -> None:
    n = len(times["stock"])
    print(f"{n} repeats, all three settings in each (rotating order), after a warm-up")
    print(f"    {'setting':<34}{'median s':>10}{'min s':>9}{'ms/step':>9}")
    for name, label in (("stock", "stock pipeline call"), ("recorded", "ours, Recorder()"),
                        ("unrecorded", "ours, Recorder(keep=())")):
        ts, med = times[name], statistics.median(times[name])
        print(f"    {label:<34}{med:>10.4f}{min(ts):>9.4f}{1e3 * med / steps:>9.2f}")
    for name, label in (("recorded", "full recording"), ("unrecorded", "no recording")):
        ratios = [a / b for a, b in zip(times[name], times["stock"], strict=True)]
        ratio = statistics.median(ratios)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio, ratio, ratio]
        verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
        print(f"ours ({label}) / stock, median of {n}: {ratio:.3f}  (IQR {q[0]:.3f}-{q[2]:.3f}; goal <= {GOAL})  "
              f"{verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~15 s version: 10 steps, fewer repeats")
    p.add_argument("--model", choices=("sd", "pixart"), default="sd", help="tiny pipeline to compare (default sd)")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default 50; quick 10)")
    p.add_argument("--repeats", type=int, default=None, help="repeats (default 31, quick 11; at least 5, fewer "
                   "once 45 s / 8 s of timing are spent)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the module docstring)")
    p.add_argument("--parity", action="store_true", help="print only the parity table (10 steps)")
    a = p.parse_args()
    steps = a.steps or (10 if a.quick else 50)
    repeats = a.repeats or (11 if a.quick else 31)
    t_start, busy = time.perf_counter(), busy_cpus()
    torch.set_num_threads(a.threads)
    import diffusers

    print(f"diffmem {diffmem.__version__} | diffusers {diffusers.__version__} | torch {torch.__version__} | "
          f"python {platform.python_version()} | {torch.get_num_threads()} threads | {os.cpu_count()} CPUs | "
          f"busy before start: {'?' if busy is None else f'{busy:.2f}'} CPUs")
    if a.parity:
        with torch.no_grad():
            report_parity(a.steps or 10)
        return
    pipe, adapter, extra = build(a.model)
    print(f"workload: tiny {a.model} pipeline, DDIM {steps} steps, {len(PROMPTS)} prompts, CFG w={GUIDANCE}, fp32"
          f"{'  [quick]' if a.quick else ''}")
    if busy is not None and busy > 0.2:
        print(f"WARNING: other processes kept {busy:.2f} CPUs busy before the start: timings are inflated and noisier")
    fns = runners(pipe, adapter, extra, steps)
    with torch.no_grad():
        ref, got = fns["stock"](), fns["recorded"]()
    print(f"parity: max |ours - stock| = {(got - ref).abs().max().item():.3g} (latents up to "
          f"{ref.abs().max().item():.3g})")
    report(measure(fns, repeats, budget_s=8.0 if a.quick else 45.0), steps)
    stub_model(adapter)
    print("\nwithout the model (forward replaced by x -> 0.1 x on both sides): per-step cost of the rest")
    times = measure(runners(pipe, adapter, extra, steps), repeats, budget_s=5.0)
    for name, label in (("stock", "stock pipeline call"), ("recorded", "ours, Recorder()"),
                        ("unrecorded", "ours, Recorder(keep=())")):
        print(f"    {label:<34}{1e3 * statistics.median(times[name]) / steps:>9.3f} ms/step")
    print(f"\ntotal wall time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
