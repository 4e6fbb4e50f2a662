"""``diffmem analyze kim``: the three analyses of Kim et al. (2025) on an embedded world or a local diffusers model.

Writes ``summary.json`` (headline numbers + provenance), ``kimresult.json``/``.safetensors`` (every per-prompt
array) and the figures F1–F6 (PNG, rendered from the saved result) into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

__all__ = ["add_parser", "run_analysis"]

QUICK = {"seeds": 4, "draws": 8, "sweep": (1.0, 4.0, 7.5), "n_boot": 500}
FULL = {"seeds": 10, "draws": 32, "sweep": (1.0, 3.0, 5.0, 7.5, 10.0), "n_boot": 2000}


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


def _subject(args):
    from diffmem.analyses.subjects import diffusers_subject, world_subject

    if args.model:
        if not args.prompts:
            raise ValueError("--model needs --prompts MANIFEST.jsonl (prompt + paired image per line)")
        return diffusers_subject(args.model, args.prompts, steps=args.steps, kind=args.model_kind)
    from diffmem.worlds.world import load_world

    world = load_world(args.world or "digits-t2i", progress=not args.no_progress)
    per_kind = args.per_kind if args.per_kind is not None else (8 if args.quick else None)
    return world_subject(world, steps=args.steps, per_kind=per_kind)


def run_analysis(subject, out: str | Path, *, quick: bool = False, primary: str | None = None,
                 progress: bool = True) -> dict:
    """Run the Kim study on ``subject``, save result, summary and figures into ``out``; returns the summary."""
    from rich.progress import Progress

    from diffmem.analyses.kim import KimConfig, run_kim
    from diffmem.io import write_json

    preset = QUICK if quick else FULL
    cfg = KimConfig(**preset, primary=primary or "ssim")
    out = Path(out)
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("kim analyses", total=len(subject.prompts))
        res = run_kim(subject, cfg, progress=lambda i: bar.advance(task))
    res.save(out)
    summary = {**res.summary, "wall_seconds": round(time.perf_counter() - start, 1), "quick": quick,
               "provenance": res.to_dict()[0]["provenance"]}
    write_json(out / "summary.json", summary)
    try:
        from diffmem.reports.kim_figures import render_kim_figures

        render_kim_figures(type(res).load(out), out)
    except ImportError:  # matplotlib is the optional ``plots`` extra
        pass
    return summary


def _cli(args) -> int:
    subject = _subject(args)
    s = run_analysis(subject, args.out, quick=args.quick, primary=args.primary, progress=not args.no_progress)
    keys = ("n_prompts", "n_seeds", "n_memorized", "n_nonmemorized", "primary_severity", "pearson_D1",
            "pearson_D2", "spearman_D1", "spearman_D2", "pearson_D1_selfref", "loss_ratio_guided_mem_vs_nonmem",
            "loss_inflation_mem", "loss_inflation_nonmem", "first_step_cos_eps_c_x_mem",
            "first_step_cos_eps_c_x_nonmem", "wall_seconds")
    for k in keys:
        v = s.get(k)
        print(f"{k:36s} {v:.4f}" if isinstance(v, float) else f"{k:36s} {v}")
    print(f"wrote {args.out}")
    return 0
