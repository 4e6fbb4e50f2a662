"""Embedding, caption, attention and initial-noise mitigations on digits-t2i: copies, alignment and extra NFE.

Trigger set: the planted prompts; general set: the non-planted and novel prompts. Per method and setting, at the
CFG weight ``--guidance`` over ``--n-gen`` generations per prompt (seeds 0 … n−1):

* trigger copy rate: share of generations that copy their paired image by the paired 1/3 rule (nearest distinct
  training image is the paired one and ‖x − a₁‖/‖x − a₂‖ ≤ 1/3);
* alignment: share of generations the digits classifier reads as the prompt's digit (trigger and general set);
* extra NFE per image: denoiser rows (plain forwards + JVP + VJP rows) beyond plain CFG's 2 per step, counted by
  :class:`~diffmem.detectors.counting.CountingDenoiser`; seconds per image (one thread).

Thresholds published for SD 1.4 latents (Wen, Han per-sample, SAIL, Han's ρ) do not transfer to 8×8 digits. Each
such method is also run at a setting calibrated on the general set with seeds apart from the evaluation seeds
(the median first-step statistic of non-planted and novel prompts; ρ scaled by the ratio of ‖x_T‖), labelled
``cal``. Run: ``OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_mitigations_first_step.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from diffmem.detectors.counting import CountingDenoiser
from diffmem.mitigations.base import make_mitigation
from diffmem.mitigations.first_step import first_step, guidance_gap
from diffmem.mitigations.sail import sail_loss
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio, unique_refs
from diffmem.similarity.digits_classifier import load_digits_classifier
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world

CAL_SEEDS = range(1000, 1004)  # calibration draws, apart from the evaluation seeds


def generations(subject, method, prompts, seeds, guidance, batch=80):
    """x_0 [P·G, ...] (prompt-major), denoiser rows counted, seconds."""
    counting = CountingDenoiser(subject.denoiser)
    counted = dataclasses.replace(subject, denoiser=counting)
    pairs = [(p, s) for p in prompts for s in seeds]
    out, start = [], time.perf_counter()
    for k in range(0, len(pairs), batch):
        chunk = pairs[k:k + batch]
        cond, sd = counted.cond([p for p, _ in chunk]), [s for _, s in chunk]
        kw = {"recorder": Recorder(keep=())}
        if method is None:
            traj = counted.sample(cond, sd, guidance=guidance, **kw)
        elif method.name in ("somepalli-rt", "ren-attention"):
            traj = method.sample(counted, cond, sd, guidance=guidance, texts=[p.text for p, _ in chunk], **kw)
        else:
            traj = method.sample(counted, cond, sd, guidance=guidance, **kw)
        out.append(traj.x_0)
    rows = counting.nfe + counting.jvp + counting.vjp
    return torch.cat(out), rows, counting.vjp + counting.jvp, time.perf_counter() - start


def paired_copies(subject, prompts, x0, n_gen):
    refs, _ = unique_refs(subject.references)
    ratio, nearest = nn_ratio(x0.to(refs.dtype), refs)
    paired = []
    for p in prompts:
        hit = (refs.flatten(1) == p.x.to(refs.dtype).flatten()[None]).all(1).nonzero()
        paired.append(int(hit[0]) if len(p.meta.get("paired_ids", [])) == 1 and len(hit) else -1)
    paired = torch.tensor(paired).repeat_interleave(n_gen)
    return ((ratio <= COPY_RATIO) & ((paired < 0) | (nearest == paired))).double()


def alignment(classifier, prompts, x0, n_gen):
    labels = torch.tensor([p.meta["label"] for p in prompts]).repeat_interleave(n_gen)
    return (classifier.predict(x0.clamp(-1, 1).float()) == labels).double()


def calibrate(subject, general, guidance):
    """Digits settings for the SD-unit thresholds: median first-step gap and SAIL loss on the general set."""
    seeds = [s for _ in general for s in CAL_SEEDS]
    cond = subject.cond([p for p in general for _ in CAL_SEEDS])
    start = first_step(subject, seeds)
    with torch.no_grad():
        gap = guidance_gap(subject.denoiser(start.x_T, start.t, cond))
        sail = sail_loss(subject, start.x_T, start, cond, delta=1.0, alpha=0.05)
    d = math.prod(subject.state_shape)
    return {"gap": float(gap.median()), "sail": float(sail.median()), "rho": 50.0 * math.sqrt(d / 16384)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--n-gen", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    torch.set_num_threads(1)
    subject = world_subject(load_world("digits-t2i", progress=False), steps=a.steps)
    trigger = [q for q in subject.prompts if q.kind == "planted"]
    general = [q for q in subject.prompts if q.kind in ("nonplanted", "novel")]
    classifier, seeds = load_digits_classifier(), list(range(a.n_gen))
    cal = calibrate(subject, general, a.guidance)
    print(f"# digits-t2i, w = {a.guidance}, {a.steps} steps, {a.n_gen} generations per prompt; "
          f"{len(trigger)} trigger, {len(general)} general prompts; calibration: median first-step gap "
          f"{cal['gap']:.4f}, median SAIL loss {cal['sail']:.4f}, rho {cal['rho']:.3f}")
    settings = [("plain", None, {}),
                ("wen-embedding", "default", {}), ("wen-embedding", "cal", {"target_loss": cal["gap"]}),
                ("kim-embedding", "default", {}), ("kim-embedding", "center=uncond", {"center": "uncond"}),
                ("kim-embedding", "loss=coded", {"loss": "coded"}),
                ("somepalli-gni", "default", {}), ("somepalli-rt", "default", {}),
                ("somepalli-rt", "sweep", {"n_tokens": 1}),
                ("ren-attention", "default", {}),
                ("han-batchwise", "default", {}), ("han-batchwise", "cal", {"rho": cal["rho"]}),
                ("han-per-sample", "default", {}), ("han-per-sample", "cal", {"target_loss": cal["gap"]}),
                ("sail", "default", {}), ("sail", "cal", {"threshold": cal["sail"]})]
    plain_rows = 2 * a.steps
    print("| method | setting | trigger copy rate | trigger alignment | general alignment | extra NFE / image "
          "(of which VJP/JVP) | s / image |")
    print("|---|---|---|---|---|---|---|")
    for name, label, params in settings:
        method = None if name == "plain" else make_mitigation(name, **params)
        x_t, rows_t, grad_t, sec_t = generations(subject, method, trigger, seeds, a.guidance)
        x_g, rows_g, grad_g, sec_g = generations(subject, method, general, seeds, a.guidance)
        n = len(x_t) + len(x_g)
        copy = paired_copies(subject, trigger, x_t, a.n_gen).mean()
        al_t, al_g = alignment(classifier, trigger, x_t, a.n_gen).mean(), alignment(classifier, general, x_g,
                                                                                     a.n_gen).mean()
        extra = (rows_t + rows_g) / n - plain_rows
        print(f"| {name} | {label or '-'} {method.setting if method else ''} | {copy:.3f} | {al_t:.3f} | "
              f"{al_g:.3f} | {extra:.1f} ({(grad_t + grad_g) / n:.1f}) | {(sec_t + sec_g) / n:.4f} |", flush=True)


if __name__ == "__main__":
    main()
