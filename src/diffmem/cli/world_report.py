"""``diffmem world-report WORLD --out DIR``: sample every manifest prompt at several CFG weights and measure
planted and non-planted copying and prompt alignment; writes DIR/summary.json, DIR/manifest.jsonl and sample grids.

Trains the world first if it is not in the cache (minutes on CPU). The sampling runs in units (one weight × a chunk
of prompts, DIR/units/ until the report is written): here, or on Ray with ``--workers N`` / ``--ray ADDRESS``, with
the same report.
"""

from __future__ import annotations

import argparse
import math

from diffmem.cli.common import _positive, add_command, add_common, add_scale, emit, progress_enabled

__all__ = ["add_parser"]


KEYS = ("planted_copy_rate", "nonplanted_copy_rate", "novel_copy_rate", "class_copy_rate", "unconditional_copy_rate",
        "memorization_ratio", "alignment")  # headline rates printed per CFG weight


def _weights(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(w) for w in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"weights must be comma-separated numbers, got {text!r}") from err
    if not all(math.isfinite(w) for w in weights):
        raise argparse.ArgumentTypeError(f"weights must be finite numbers, got {text!r}")
    return weights


def add_parser(sub) -> None:
    p = add_command(sub, "world-report", __doc__)
    p.add_argument("world", metavar="WORLD",
                   help="digits-t2i | digits-dit | digits-bench | custom | PATH | checkpoint dir")
    add_common(p, seed=0, steps="DDIM; default 50, fewer steps make strong guidance overshoot")
    p.add_argument("--samples", type=_positive, metavar="N", help="samples per prompt (default 10; quick: 4)")
    p.add_argument("--weights", type=_weights, help="CFG weights (default: 0,1,4,7.5; digits-bench: 1,3,7.5)")
    p.add_argument("--quick", action="store_true",
                   help="8 prompts per kind, 4 samples each (about 15 s with a trained world)")
    p.add_argument("--chunk", type=_positive, metavar="N", help="prompts per checkpointed unit of one weight "
                   "(default: 1000 samples a unit)")
    add_scale(p)
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    if args.dry_run:
        return emit(args, {"world": args.world, "out": str(args.out), "quick": args.quick,
                           "samples": args.samples, "steps": args.steps, "seed": args.seed,
                           "weights": list(args.weights) if args.weights else None, "chunk": args.chunk,
                           "workers": args.workers, "ray": args.ray})
    from diffmem.reports.html import finish_report
    from diffmem.worlds.report import world_report

    s = world_report(args.world, args.out, quick=args.quick, samples=args.samples, weights=args.weights,
                     steps=args.steps, seed=args.seed, chunk_size=args.chunk, progress=progress_enabled(args),
                     workers=args.workers, address=args.ray)
    summary = {"world": s["world"], "samples_per_prompt": s["samples_per_prompt"], "steps": s["steps"],
               "seconds": round(s["seconds"], 1), "threads": args.threads, **s["units"],
               **({"workers": args.workers} if args.workers else {}), **({"ray": args.ray} if args.ray else {})}
    if "by_duplication" in s:  # the graded world: copy rate per rung, regime and w; templates; negatives
        summary.update({f"w{r['w']:g}_{r['regime']}_m{r['m']}_copy_rate": r["copy_rate"] for r in s["by_duplication"]})
        summary.update({f"w{w}_template_masked_copy_rate": t["masked"] for w, t in s["template"].items()})
        for w, neg in s["negative_copy_rate"].items():
            summary.update({f"w{w}_negative_{k}_copy_rate": v for k, v in neg.items() if v is not None})
    else:
        for w, m in s["per_w"].items():
            summary.update({f"w{w}_{k}": m[k] for k in KEYS if m.get(k) is not None})
    return emit(args, {**summary, "out": str(args.out), "report": str(finish_report(args.out))})
