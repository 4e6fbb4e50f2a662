"""``diffmem prune --world digits-dit --ratio 0.2 --out DIR``: Table 1 of Ye et al. (2025) on a world — the
original model, Algorithm-1 head pruning and random pruning at the same ratio, each fine-tuned identically, over
several runs — and the variants: importance with uniform-t scoring, with weight decay 0.3 while fine-tuning, at
η = 0.1 / 0.3 / 0.5, ours (heads chosen by single-head ablation of copies, η = 0.2 / 0.3 / 0.5), a
fine-tune-only control (η = 0) and the same choices with a shorter fine-tuning (M = 300). Writes DIR/summary.json,
DIR/runs/*.json (resumable; two processes may fill different --methods of one DIR) and the pruned models in
DIR/pruned/ (Algorithm 1) and DIR/pruned-ours-copy-ablation/.

Trains the world first if it is not in the cache (minutes on CPU).

``diffmem prune --model LOCAL_DIR --data DATA.npz --ratio 0.2 --out DIR``: the same table for a diffusers DiT or
PixArt pipeline saved in LOCAL_DIR (loaded offline). DATA.npz holds ``images`` [N, C, H, W] or [N, H, W, C] in
[0, 1] (or uint8) at the model's pixel size and ``labels`` [N] (DiT: class ids, needed unless the model has one
class) or ``captions`` [N] (PixArt). Metrics are computed on decoded pixels (FID and precision/recall against
DATA's images); the Algorithm-1 model of run 0 is saved to DIR/pruned/ (diffmem.mitigations.diffusers_heads.
load_pruned).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace

from diffmem.adapters.subject_data import load_data_adapter
from diffmem.mitigations.prune_backends import diffusers_inputs, world_inputs
from diffmem.mitigations.prune_results import format_table
from diffmem.mitigations.prune_table import FULL, QUICK, TABLE_METHODS, VARIANTS, TableSettings, run_table
from diffmem.reports.html import finish_report
from diffmem.similarity.features import TorchScriptExtractor
from diffmem.worlds.world import load_world

__all__ = ["add_parser"]

FLAGS = {"runs": ("runs", "runs (seeds 0..R-1)"), "samples": ("n_samples", "generated samples per run"),
         "finetune-steps": ("finetune_steps", "fine-tuning steps M"), "batches": ("num_batches", "scoring batches"),
         "steps": ("sample_steps", "DDIM sampling steps"),
         "score-samples": ("score_samples", "scoring samples of ours")}  # flag -> TableSettings field


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="memorization-reducing head pruning of a world's or a diffusers DiT/PixArt "
                       "(Ye et al., 2025)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--world", default="digits-dit", help="world name or checkpoint dir (default: %(default)s)")
    source.add_argument("--model", help="local diffusers DiTPipeline or PixArt pipeline directory (instead of --world)")
    p.add_argument("--data", help="with --model: .npz with images in [0, 1] and labels or captions")
    p.add_argument("--batch-size", type=int, help="with --model: scoring and fine-tuning batch (default 128; "
                   "quick: 16)")
    p.add_argument("--device", help="with --model: torch device of the model (default cpu)")
    p.add_argument("--features", help="with --model: local TorchScript feature model for FID and precision/recall "
                   "(default: decoded pixels pooled to <= 32x32)")
    p.add_argument("--preprocess", default="inception299", help="with --features: preprocessing preset "
                   "(default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.2, help="fraction η of heads removed (default: %(default)s)")
    p.add_argument("--law", choices=("beta", "uniform"), default="beta",
                   help="scoring time law: Beta(0.8, 2) or uniform (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    for flag, (key, help_) in FLAGS.items():
        p.add_argument(f"--{flag}", type=int, dest=key, metavar="N",
                       help=f"{help_} (default {getattr(FULL, key)}; quick: {getattr(QUICK, key)})")
    p.add_argument("--methods", help="comma-separated rows of the table, or 'all' or 'table' (original,importance,"
                   "random); default: all with --world, table with --model; known: " + ", ".join(VARIANTS))
    p.add_argument("--summarize-only", action="store_true", help="compute nothing: summarize the rows already in "
                   "--out (each method over the runs it has)")
    p.add_argument("--quick", action="store_true", help="smaller settings: " + ", ".join(
        f"{flag}={getattr(QUICK, key)}" for flag, (key, _) in FLAGS.items()))
    p.add_argument("--no-progress", action="store_true", help="no progress bar while training the world")
    p.set_defaults(run=_cli)


def _methods(text: str | None, model: bool) -> tuple[str, ...]:
    text = text or ("table" if model else "all")
    if text in ("all", "table"):
        return tuple(VARIANTS) if text == "all" else TABLE_METHODS
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown or not methods:
        raise ValueError(f"unknown --methods {unknown or text!r}; known: {', '.join(VARIANTS)}")
    return methods


def _inputs(args, quick: bool):
    if args.model:
        if not args.data:
            raise ValueError("--model needs --data DATA.npz (images in [0, 1] and labels or captions)")
        adapter = load_data_adapter(args.model)
        adapter.pipeline.to(args.device or "cpu")
        features = args.features and TorchScriptExtractor(args.features, preprocess=args.preprocess,
                                                          device=args.device or "cpu")
        return diffusers_inputs(adapter, args.data, batch_size=args.batch_size or (16 if quick else 128),
                                features=features or None)
    if any(v is not None for v in (args.data, args.batch_size, args.device, args.features)):
        raise ValueError("--data, --batch-size, --device and --features go with --model, not with --world")
    return world_inputs(load_world(args.world, progress=not args.no_progress))


def _cli(args) -> int:
    settings = replace(QUICK if args.quick else FULL, ratio=args.ratio, law=args.law,
                       **{k: getattr(args, k) for k, _ in FLAGS.values() if getattr(args, k) is not None})
    methods = _methods(args.methods, bool(args.model))
    t0 = time.perf_counter()
    inputs = _inputs(args, args.quick)
    table = run_table(inputs.subject, inputs.evaluation, inputs.recipe, args.out, settings=settings, methods=methods,
                      compute=not args.summarize_only)
    print(f"{inputs.subject.name}: {_short(settings)}, batch_size={inputs.recipe.batch_size}, "
          f"{time.perf_counter() - t0:.0f} s")
    print(format_table(table))
    print(json.dumps({"out": args.out, "report": str(finish_report(args.out))}))
    return 0


def _short(settings: TableSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
