"""``diffmem prune --world digits-dit --ratio 0.2 --out DIR``: Table 1 of Ye et al. (2025) on a world — the
original model, Algorithm-1 head pruning and random pruning at the same ratio, each fine-tuned identically, over
several runs — and the variants: importance with uniform-t scoring, with weight decay 0.3 while fine-tuning, at
η = 0.1 / 0.3 / 0.5, ours (heads chosen by single-head ablation of copies, η = 0.2 / 0.3 / 0.5), a
fine-tune-only control (η = 0) and the same choices with a shorter fine-tuning (M = 300). Writes DIR/summary.json,
DIR/runs/*.json (resumable; two processes may fill different --methods of one DIR) and the pruned models in
DIR/pruned/ (Algorithm 1) and DIR/pruned-ours-copy-ablation/.

Trains the world first if it is not in the cache (minutes on CPU).

``diffmem prune --model LOCAL_DIR --data DATA.npz --ratio 0.2 --out DIR``: the same table (original, importance,
random) for a diffusers DiTPipeline saved in LOCAL_DIR (loaded offline). DATA.npz holds ``images`` [N, C, H, W] or
[N, H, W, C] in [0, 1] (or uint8) at the model's pixel size and ``labels`` [N] (class ids; needed unless the model
has one class). Metrics are computed on decoded pixels (FID and precision/recall against DATA's images); the
Algorithm-1 model of run 0 is saved to DIR/pruned/ (diffmem.mitigations.diffusers_heads.load_pruned).
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser"]

QUICK = {"runs": 2, "samples": 200, "finetune_steps": 100, "batches": 10, "steps": 20, "score_samples": 32}
FULL = {"runs": 5, "samples": 1000, "finetune_steps": 1000, "batches": 100, "steps": 50, "score_samples": 128}


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="memorization-reducing head pruning of a world's or a diffusers DiT "
                       "(Ye et al., 2025)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--world", default="digits-dit", help="world name or checkpoint dir (default: %(default)s)")
    source.add_argument("--model", help="local diffusers DiTPipeline directory (instead of --world)")
    p.add_argument("--data", help="with --model: .npz with images in [0, 1] and labels")
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
    for name, help_ in (("runs", "runs (seeds 0..R-1)"), ("samples", "generated samples per run"),
                        ("finetune-steps", "fine-tuning steps M"), ("batches", "scoring batches"),
                        ("steps", "DDIM sampling steps"), ("score-samples", "scoring samples of ours")):
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=int, dest=key,
                       help=f"{help_} (default {FULL[key]}; quick: {QUICK[key]})")
    p.add_argument("--methods", default="all", help="comma-separated rows of the table, or 'all' (default) or "
                   "'table' (original,importance,random); known: " + ", ".join(_variant_names()))
    p.add_argument("--summarise-only", action="store_true", help="compute nothing: summarise the rows already in "
                   "--out (each method over the runs it has)")
    p.add_argument("--quick", action="store_true", help="smaller settings: " + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-progress", action="store_true", help="no progress bar while training the world")
    p.set_defaults(run=_cli)


def _variant_names() -> list[str]:
    from diffmem.mitigations.experiment import VARIANTS

    return list(VARIANTS)


def _methods(text: str) -> tuple[str, ...]:
    from diffmem.mitigations.experiment import TABLE_METHODS, VARIANTS

    if text in ("all", "table"):
        return tuple(VARIANTS) if text == "all" else TABLE_METHODS
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown or not methods:
        raise ValueError(f"unknown --methods {unknown or text!r}; known: {', '.join(VARIANTS)}")
    return methods


def _cli(args) -> int:
    import time

    from diffmem.mitigations.experiment import VARIANTS, run_table
    from diffmem.mitigations.head_pruning import prune_count
    from diffmem.worlds import world as worlds

    prune_count(1, args.ratio)  # reject a bad η before training or loading the world
    methods = _methods(args.methods)
    preset = QUICK if args.quick else FULL
    opt = {k: preset[k] if getattr(args, k) is None else getattr(args, k) for k in preset}
    t0 = time.perf_counter()
    if args.model:
        return _cli_model(args, opt, methods, t0)
    if any(v is not None for v in (args.data, args.batch_size, args.device, args.features)):
        raise ValueError("--data, --batch-size, --device and --features go with --model, not with --world")
    world = worlds.load_world(args.world, progress=not args.no_progress)
    s = run_table(world, args.out, ratio=args.ratio, law=args.law, runs=opt["runs"], n_samples=opt["samples"],
                  finetune_steps=opt["finetune_steps"], num_batches=opt["batches"], sample_steps=opt["steps"],
                  score_samples=opt["score_samples"], methods=methods, compute=not args.summarise_only)
    print(f"{world.name}: eta={args.ratio}, law={args.law}, {opt}, {time.perf_counter() - t0:.0f} s")
    _print_table(s, methods, {m for m in methods if VARIANTS[m].ours}, args.out)
    return 0


def _cli_model(args, opt: dict, methods: tuple[str, ...], t0: float) -> int:
    import time

    from diffmem.mitigations.diffusers_table import MODEL_METHODS, run_model_table

    if not args.data:
        raise ValueError("--model needs --data DATA.npz (images in [0, 1] and labels)")
    if args.summarise_only:
        raise ValueError("--summarise-only reads world tables; a --model table resumes by itself")
    if args.methods in ("all", "table"):
        methods = MODEL_METHODS
    batch_size = args.batch_size or (16 if args.quick else 128)
    features = None
    if args.features:
        from diffmem.similarity.features import TorchScriptExtractor

        features = TorchScriptExtractor(args.features, preprocess=args.preprocess, device=args.device or "cpu")
    s = run_model_table(args.model, args.data, args.out, ratio=args.ratio, runs=opt["runs"], law=args.law,
                        num_batches=opt["batches"], batch_size=batch_size, finetune_steps=opt["finetune_steps"],
                        n_samples=opt["samples"], sample_steps=opt["steps"], methods=methods,
                        device=args.device or "cpu", features=features)
    print(f"{args.model}: eta={args.ratio}, law={args.law}, batch={batch_size}, {opt}, "
          f"{time.perf_counter() - t0:.0f} s; features: {s['settings']['feature_space']}")
    _print_table(s, methods, set(), args.out)
    return 0


def _delta(r: dict) -> str:
    if "mem_ratio_delta_mean" not in r:
        return ""
    return (f"{100 * r['mem_ratio_delta_mean']:>+11.2f}±{100 * r['mem_ratio_delta_std']:.2f}"
            f"{r['fid_delta_mean']:>+10.3f}±{r['fid_delta_std']:.3f}")


def _print_table(s: dict, methods: tuple[str, ...], ours: set, out: str) -> None:
    print(f"{'model':<40}{'precision':>12}{'recall':>12}{'mem. ratio %':>16}{'FID':>14}{'':>10}"
          f"{'Δmem % (paired)':>18}{'ΔFID (paired)':>16}")
    for m in [m for m in methods if m in s]:
        r = s[m]
        label = f"{m} (ours)" if m in ours else m
        print(f"{label:<40}{r['precision_mean']:>7.3f}±{r['precision_std']:.3f}{r['recall_mean']:>7.3f}±"
              f"{r['recall_std']:.3f}{100 * r['mem_ratio_mean']:>10.2f}±{100 * r['mem_ratio_std']:.2f}"
              f"{r['fid_mean']:>9.3f}±{r['fid_std']:.3f}{r['runs']:>6d} runs" + _delta(r))
    print(json.dumps({"out": out}))
