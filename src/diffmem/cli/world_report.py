"""``diffmem world-report WORLD --out DIR``: sample every manifest prompt at several CFG weights and measure
planted and non-planted copying and prompt alignment; writes DIR/summary.json, DIR/manifest.jsonl and sample grids.

Trains the world first if it is not in the cache (minutes on CPU).
"""

from __future__ import annotations

import argparse
import json

from diffmem.reports.html import finish_report

__all__ = ["add_parser"]


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"weights must be comma-separated numbers, got {text!r}") from err


def add_parser(sub) -> None:
    p = sub.add_parser("world-report", help="measure how much a trained world memorizes its planted pairs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", metavar="WORLD", help="digits-t2i | digits-dit | custom | PATH | checkpoint dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--samples", type=int, help="samples per prompt (default 10; quick: 4)")
    p.add_argument("--steps", type=int, help="DDIM steps (default 50; fewer steps make strong guidance overshoot)")
    p.add_argument("--weights", type=_weights, default=(0.0, 1.0, 4.0, 7.5),
                   help="CFG weights (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="8 prompts per kind, 4 samples each (about 15 s with a trained world)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while training")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.worlds.report import world_report

    s = world_report(args.world, args.out, quick=args.quick, samples=args.samples, weights=args.weights,
                     steps=args.steps, seed=args.seed, progress=not args.no_progress)
    keys = ("planted_copy_rate", "nonplanted_copy_rate", "novel_copy_rate", "class_copy_rate",
            "unconditional_copy_rate", "memorization_ratio", "alignment")
    print(f"{s['world']}: {s['samples_per_prompt']} samples/prompt, {s['steps']} steps, {s['seconds']:.0f} s")
    for w, m in s["per_w"].items():
        print(f"w={w:>4}  " + "  ".join(f"{k}={m[k]:.3f}" for k in keys if m.get(k) is not None))
    print(json.dumps({"out": args.out, "report": str(finish_report(args.out))}))
    return 0
