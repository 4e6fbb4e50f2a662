"""``diffmem analyze kim``: the three analyses of Kim et al. (2025) on an embedded world or a local diffusers model.

Writes into --out: summary.json (headline numbers, prompts without a training image, what was skipped and why,
provenance), kimresult.json/.safetensors (every per-prompt array) and the figures F1–F6 (PNG, rendered from the
saved result). Each prompt is saved as it finishes (--out/units/, deleted at the end): after a kill or Ctrl-C, the
same command resumes where it stopped.

A --prompts manifest is JSONL, one {"prompt": ..., "image": PATH (optional), "kind": ..., "id": ...} per line.
Prompts without an image get the training-data-free analyses (self-referenced D, seed convergence and, with --refs,
the share of seeds copying a reference); the others are skipped with the reason in summary.json. --refs DIR|NPZ
replaces the reference set of the copy rule (default: the manifest's or world's own training images).
"""

from __future__ import annotations

import math

from diffmem.cli.common import add_command, add_common, add_scale, emit, progress_enabled

__all__ = ["add_parser"]

PRINTED = ("n_prompts", "n_seeds", "n_memorized", "n_nonmemorized", "primary_severity", "pearson_D1",
           "pearson_D2", "spearman_D1", "spearman_D2", "pearson_D1_selfref", "loss_ratio_guided_mem_vs_nonmem",
           "loss_inflation_mem", "loss_inflation_nonmem", "first_step_cos_eps_c_x_mem",
           "first_step_cos_eps_c_x_nonmem")  # KimSummary fields printed to the terminal


def add_parser(sub) -> None:
    p = add_command(sub, "analyze", __doc__)
    p.add_argument("analysis", choices=["kim", "kim-theory"], help="which study (kim-theory: the authors' revised "
                   "theorems against the exact training law; default world digits-bench)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--world", default=None, help="embedded world (default: digits-t2i)")
    src.add_argument("--model", default=None, help="local diffusers directory (Stable Diffusion or PixArt)")
    p.add_argument("--model-kind", default="sd", choices=["sd", "pixart"], help="pipeline family of --model")
    p.add_argument("--prompts", default=None, help="JSONL manifest of prompts, each with its training image where "
                   "there is one (with --model)")
    p.add_argument("--refs", metavar="DIR|NPZ", help="reference images of the copy rule (default: the training "
                   "images of the manifest or world)")
    add_common(p, model=("device", "dtype", "batch-size"), seed=None, steps=50)  # batch: seeds per forward
    p.add_argument("--seeds", dest="n_seeds", type=int, metavar="N", help="seeds per prompt, 0..N-1 (default 10; "
                   "--quick: 4)")
    p.add_argument("--guidance", type=float, metavar="W", help="CFG weight of the main trajectories (default 7.5)")
    p.add_argument("--per-kind", type=int, default=None, help="prompts of each kind from a world (default: all; "
                   "--quick: 8)")
    p.add_argument("--primary", default=None, choices=("ssim", "l2_sim", "cosine", "copy_rate"),
                   help="primary severity metric: ssim (default), l2_sim, cosine or copy_rate")
    p.add_argument("--quick", action="store_true", help="4 seeds, 8 noise draws, 3 guidance weights, 8 prompts/kind")
    add_scale(p)
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.adapters.subject import model_device
    from diffmem.detectors.counting import PeakMemory
    from diffmem.runners.kim import analyze_kim

    if args.n_seeds is not None and args.n_seeds < 2:
        raise ValueError(f"--seeds {args.n_seeds}: the seed analyses need at least 2 seeds per prompt")
    if args.guidance is not None and not math.isfinite(args.guidance):
        raise ValueError(f"--guidance {args.guidance!r} must be a finite CFG weight, e.g. 7.5")
    if args.model and not args.prompts:
        raise ValueError("--model needs --prompts MANIFEST.jsonl (one prompt per line, with its training image "
                         "where there is one)")
    overrides = {k: v for k, v in (("n_seeds", args.n_seeds), ("guidance", args.guidance),
                                   ("batch_size", args.batch_size)) if v is not None}
    settings = {"world": args.world, "model": args.model, "model_kind": args.model_kind, "prompts": args.prompts,
                "refs": args.refs, "steps": args.steps, "per_kind": args.per_kind, "primary": args.primary,
                "quick": args.quick, "device": args.device, "dtype": args.dtype}
    if args.dry_run:
        where = str(model_device(args.device)) if args.model else "cpu"  # where it would run (a world: the CPU)
        return emit(args, {**settings, **overrides, "device": where, "batch_size": args.batch_size,
                           "analysis": args.analysis, "out": str(args.out)})
    if args.analysis == "kim-theory":
        return _theory(args, settings, overrides)
    # the memory the run added at its peak: the GPU's when the model runs there, else this process's resident set
    with PeakMemory(model_device(args.device) if args.model else "cpu") as peak:
        run = analyze_kim(args.out, **settings, progress=progress_enabled(args), workers=args.workers,
                          address=args.ray, **overrides)
    summary = {k: getattr(run.summary, k) for k in PRINTED} if run.summary else {}
    if run.selfref:
        summary["n_prompts_without_image"] = len(run.selfref)
        summary["median_D1_selfref_without_image"] = sorted(r["D1_selfref"] for r in run.selfref)[len(run.selfref) // 2]
    for what, why in (run.skipped or {}).items():
        summary[f"skipped: {what}"] = why
    return emit(args, {**summary, "wall_seconds": run.wall_seconds, "peak_mem_mb": round(peak.peak_mb, 1),
                       "batch_size": args.batch_size, "threads": args.threads, "out": str(args.out)})


THEORY_PRINTED = ("n_prompts", "lemma4_max_residual", "lemma4_max_residual_solver", "lemma6_violations",
                  "prop5_condition_met", "prop5_transitions", "prop5_gain_positive_fraction", "prop5_violations",
                  "thm7_clean_endpoints", "thm7_coverage", "thm7_coverage_unclean")


def _theory(args, settings: dict, overrides: dict) -> int:
    """``analyze kim-theory``: the revised theorems of Kim et al. on the same subject sources."""
    from diffmem.runners.kim_theory import analyze_kim_theory

    extra = [f for f in ("refs", "per_kind", "primary") if settings[f] is not None]
    extra += ["batch_size"] if overrides.pop("batch_size", None) is not None else []
    if extra:
        raise ValueError(f"--{extra[0].replace('_', '-')} belongs to 'analyze kim', not 'analyze kim-theory'; drop it")
    if args.workers or args.ray:
        raise ValueError("--workers/--ray: 'analyze kim-theory' runs in this process only; drop the flag")
    keep = ("world", "model", "model_kind", "prompts", "steps", "quick", "device", "dtype")
    s = analyze_kim_theory(args.out, **{k: settings[k] for k in keep}, progress=progress_enabled(args), **overrides)
    return emit(args, {**{k: s[k] for k in THEORY_PRINTED}, "wall_seconds": s["wall_seconds"],
                       "units": s["units"], "threads": args.threads, "out": str(args.out)})
