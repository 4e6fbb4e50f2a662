"""``diffmem theory``: the theory lab of Ye, Zhu, Tao & Chen (2025) on Gaussian mixtures, CPU only.

  loss-gap  Prop. 4.1 (DSM-loss difference = Fisher divergence) and the small-t closed form, vs t, n, d, s²
  scores    empirical vs true score: copies under the 1/3 rule, collapse time vs n and d, Lipschitz bounds
  sweep     MLP score networks: memorization vs size, n, d, width, weight decay, duplication (resumable)
  teaser    2-D mixture, growing networks, copies highlighted

Each writes OUT/summary.json, OUT/<kind>.json + .safetensors and PNG figures.
"""

from __future__ import annotations

import sys

from diffmem.cli.common import add_command, add_common, add_scale, emit, progress_enabled, start_run

__all__ = ["add_parser"]

KINDS = ("loss-gap", "scores", "sweep", "teaser")


def add_parser(sub) -> None:
    p = add_command(sub, "theory", __doc__)
    p.add_argument("experiment", choices=KINDS, help="which experiment to run")
    add_common(p, seed=None)
    p.add_argument("--quick", action="store_true", help="quick preset (each ≤ 3 min on 2 free cores)")
    p.add_argument("--preset", choices=("quick", "default"), default=None,
                   help="sweep grid (default: 'quick' with --quick, else 'default'); 'paper' needs a GPU")
    p.add_argument("--no-figures", action="store_true", help="write summary.json only")
    add_scale(p)  # the sweep's runs
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    from diffmem.executor import make_executor
    from diffmem.reports.html import finish_report
    from diffmem.theory import lab

    figures = not args.no_figures
    preset = args.preset or ("quick" if args.quick else "default")
    if args.dry_run:
        return emit(args, {"out": str(args.out), **_settings(args.experiment, preset)})
    if args.experiment != "sweep" and (args.workers or args.ray):
        raise ValueError(f"--workers/--ray run the runs of 'theory sweep'; {args.experiment!r} runs in one process")
    start_run(args.out, ("summary.json", "report.html"))
    if args.experiment == "loss-gap":
        s = lab.run_loss_gap(args.out, quick=args.quick, figures=figures)
        summary = {"reference": s.reference, "prop41_all_agree": s.prop41_all_agree,
                   "max_rel_err_small_t": s.max_rel_err_small_t}
    elif args.experiment == "scores":
        s = lab.run_scores(args.out, quick=args.quick, figures=figures)
        summary = {"memorization": s.memorization, "heldout_loglik_mean": s.heldout_loglik_mean,
                   "t_collapse": [(r["dim"], r["n"], r["t_collapse"]) for r in s.collapse["rows"]]}
    elif args.experiment == "sweep":
        show = progress_enabled(args)
        with make_executor(workers=args.workers, address=args.ray) as executor:
            s = lab.run_sweep_preset(args.out, preset=preset, figures=figures, executor=executor,
                                     progress=lambda k, n, key: show and print(f"[{k}/{n}] {key}", file=sys.stderr,
                                                                               flush=True))
        summary = {"findings": list(s.findings)}
    else:
        s = lab.run_teaser(args.out, quick=args.quick, figures=figures)
        summary = {"rows": s.rows}
    return emit(args, {**summary, "seconds": s.wall_s, "threads": args.threads, "out": str(args.out),
                       "report": str(finish_report(args.out))})


def _settings(experiment: str, preset: str) -> dict:
    from diffmem.theory.sweeps import PRESETS, plan
    from diffmem.theory.teaser import TEASER_PRESETS

    if experiment == "sweep":
        cfg = PRESETS[preset]
        runs = {s.key for specs in plan(cfg).values() for s in specs}
        return {**cfg.to_dict(), "unique_runs": len(runs)}
    if experiment == "teaser":
        return TEASER_PRESETS[preset].to_dict()
    return {"experiment": experiment, "quick": preset == "quick"}
