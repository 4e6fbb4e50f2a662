"""``diffmem analyze kim``: the three analyses of Kim et al. (2025) on an embedded world or a local diffusers model.

Writes ``summary.json`` (headline numbers + provenance), ``kimresult.json``/``.safetensors`` (every per-prompt
array) and the figures F1–F6 (PNG, rendered from the saved result) into ``--out``.
"""

from __future__ import annotations

import argparse

from diffmem.runners.kim import analyze_kim

__all__ = ["add_parser"]

PRINTED = ("n_prompts", "n_seeds", "n_memorized", "n_nonmemorized", "primary_severity", "pearson_D1",
           "pearson_D2", "spearman_D1", "spearman_D2", "pearson_D1_selfref", "loss_ratio_guided_mem_vs_nonmem",
           "loss_inflation_mem", "loss_inflation_nonmem", "first_step_cos_eps_c_x_mem",
           "first_step_cos_eps_c_x_nonmem")  # KimSummary fields printed to the terminal


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="run a paper's analyses (kim: how diffusion models memorize)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("analysis", choices=["kim"], help="which study")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--world", default=None, help="embedded world (default: digits-t2i)")
    src.add_argument("--model", default=None, help="local diffusers directory (Stable Diffusion or PixArt)")
    p.add_argument("--model-kind", default="sd", choices=["sd", "pixart"], help="pipeline family of --model")
    p.add_argument("--prompts", default=None, help="JSONL manifest of prompts and paired images (with --model)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--per-kind", type=int, default=None, help="prompts of each kind from a world (default: all; "
                   "--quick: 8)")
    p.add_argument("--primary", default=None,
                   help="primary severity metric: ssim (default), l2_sim, cosine or copy_rate")
    p.add_argument("--quick", action="store_true", help="4 seeds, 8 noise draws, 3 guidance weights, 8 prompts/kind")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    if args.model and not args.prompts:
        raise ValueError("--model needs --prompts MANIFEST.jsonl (prompt + paired image per line)")
    run = analyze_kim(args.out, world=args.world, model=args.model, model_kind=args.model_kind,
                      prompts=args.prompts, steps=args.steps, per_kind=args.per_kind, primary=args.primary,
                      quick=args.quick, progress=not args.no_progress)
    for k in PRINTED:
        v = getattr(run.summary, k)
        print(f"{k:36s} {v:.4f}" if isinstance(v, float) else f"{k:36s} {v}")
    print(f"{'wall_seconds':36s} {run.wall_seconds:.4f}")
    print(f"wrote {args.out}")
    return 0
