"""``diffmem detect --world W | --model DIR --prompts FILE --out DIR``: every detector on one ground truth.

Scores each prompt with each detector at each number of generations, labels it (planted and measured), calibrates
thresholds on the calibration split and writes DIR/summary.json (rows: AUC with CI, TPR at 1 % and 0.1 % FPR,
NFE per generation, seconds per prompt, peak memory) and DIR/scores.csv. Resumes a killed run in the same DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from diffmem.cli.common import _positive, add_command, add_common, add_scale, emit, progress_enabled, start_run

if TYPE_CHECKING:
    from rich.console import Console

    from diffmem.detectors.harness import DetectionSummary
    from diffmem.subject import Subject

__all__ = ["add_parser", "add_subject_args", "subject_from_args", "placement", "print_table", "wide_console", "QUICK"]

# --quick: at most per_kind prompts per kind (and rung m, caption regime), one generation, two label
# generations, a short bootstrap
QUICK = {"per_kind": 20, "n_gen": (1,), "n_label": 2, "n_boot": 200}


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"generation counts must be >= 1, got {text!r}")
    return values


def names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_subject_args(p, *, dry_run: bool = False) -> None:
    """--world | --model/--prompts, --quick and the shared options, with --device/--dtype for --model (shared by
    detect, audit and mitigate; ``dry_run``: the command honours ``--dry-run``)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--world", metavar="W", help="embedded world (digits-t2i, digits-bench, …) or checkpoint dir")
    src.add_argument("--model", metavar="DIR", help="local diffusers model directory (needs --prompts)")
    p.add_argument("--prompts", metavar="FILE", help="JSONL prompt manifest for --model")
    add_common(p, model=("device", "dtype"), seed=0, steps=50, dry_run=dry_run)  # generation j: seed SEED + j
    add_scale(p)
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")


def add_parser(sub) -> None:
    p = add_command(sub, "detect", __doc__)
    add_subject_args(p, dry_run=True)
    p.add_argument("--detectors", type=names, help="comma-separated registry names (default: all)")
    p.add_argument("--n-gen", type=ints, help="generations per prompt (default 1,4; quick: 1)")
    p.add_argument("--labels", type=names, default=("planted", "measured"), help="planted,measured")
    p.add_argument("--n-label", type=_positive, metavar="N", help="generations that decide the measured label "
                   "(default 4; quick: 2)")
    p.add_argument("--chunk", type=_positive, default=16, metavar="N", help="prompts per checkpointed unit "
                   "(default: %(default)s)")
    p.set_defaults(run=_cli)


def build_subject(world: str | None, model: str | None, prompts: str | None, steps: int, quick: bool,
                  progress: bool = False, train: bool = True, *, device: str = "auto",
                  dtype: str = "float32") -> Subject:
    """The subject of a world or a model directory with its manifest (at most ``QUICK["per_kind"]`` prompts per
    kind with ``quick``): a module-level recipe, so that a Ray worker builds the same subject from these names.
    ``train=False`` refuses an untrained world instead of training it. A model runs on ``device`` in ``dtype``
    (``auto``: CUDA when torch sees it, resolved where the subject is built — in a Ray worker, on the GPU it was
    given); an embedded world on the CPU in float32."""
    from diffmem.worlds.subject import check_world_placement, world_subject
    from diffmem.worlds.world import load_world

    if model is not None:
        subject = model_subject(model, prompts, steps=steps, device=device, dtype=dtype)
    elif prompts is not None:
        raise ValueError("--prompts goes with --model; a --world brings its own prompts")
    else:
        check_world_placement(device, dtype)
        subject = world_subject(load_world(world, progress=progress, train=train), steps=steps)
    if quick:  # at most per_kind prompts of each kind, rung and caption regime, in manifest order
        strata: dict[tuple, list[str]] = {}
        for p in subject.prompts:
            strata.setdefault((p.kind, p.meta.get("m"), p.meta.get("regime")), []).append(p.id)
        keep = {i for ids in strata.values() for i in ids[:QUICK["per_kind"]]}
        subject = subject.select(ids=[p.id for p in subject.prompts if p.id in keep])
    return subject


def subject_recipe(args) -> partial:
    """``build_subject`` over the flags: what each Ray worker runs once to hold the subject (``--device auto`` is
    carried unresolved, so that each worker resolves it on its own device)."""
    return partial(build_subject, args.world, args.model, args.prompts, args.steps, args.quick,
                   device=getattr(args, "device", "auto"), dtype=getattr(args, "dtype", "float32"))


def subject_from_args(args) -> Subject:
    """The subject of ``--world`` or ``--model``/``--prompts`` (all prompts; at most ``QUICK["per_kind"]`` per kind
    with ``--quick``). A dry run never trains: an untrained world is refused in one line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dry = getattr(args, "dry_run", False)
    try:
        return subject_recipe(args)(progress=progress_enabled(args), train=not dry)
    except ValueError as err:
        if dry and "is not trained" in str(err):
            raise ValueError(f"--dry-run never trains, and world {args.world!r} is not trained yet; run "
                             f"`diffmem train {args.world}` first, or drop --dry-run") from None
        raise


def executor_from_args(args):
    """Serial unless ``--workers``/``--ray`` (then Ray workers that each build the subject once)."""
    from diffmem.executor import make_executor

    return make_executor(subject_recipe(args), workers=args.workers, address=args.ray)


def model_kind(model: str | Path) -> str:
    """The adapter kind (``sd``, ``pixart``) of a local diffusers directory, from its ``model_index.json``."""
    from diffmem.adapters.subject import ADAPTER_KINDS

    index = Path(model) / "model_index.json"
    if not index.is_file():
        raise ValueError(f"--model {str(model)!r} has no model_index.json; give a local diffusers pipeline directory")
    name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    for kind, adapter in ADAPTER_KINDS.items():
        if name in adapter.pipeline_classes:
            return kind
    known = sorted(c for a in ADAPTER_KINDS.values() for c in a.pipeline_classes)
    raise ValueError(f"--model {str(model)!r} is a {name!r}; detect and audit take a text-to-image pipeline: {known}")


def model_subject(model: str, prompts: str | None, *, steps: int, device: str = "auto",
                  dtype: str = "float32") -> Subject:
    """A local diffusers model with a prompt manifest as a subject on ``device`` in ``dtype`` (the one place
    ``--model`` is wired)."""
    from diffmem.adapters.subject import diffusers_subject

    if prompts is None:
        raise ValueError("--model needs --prompts FILE (a JSONL manifest: prompt, image, optional id, kind, split, m)")
    return diffusers_subject(model, prompts, steps=steps, kind=model_kind(model), device=device, dtype=dtype)


def placement(subject: Subject) -> dict:
    """Where the subject's model runs, for a dry run's settings: ``{"device": ..., "dtype": ...}``."""
    return {"device": str(subject.device), "dtype": str(subject.dtype).removeprefix("torch.")}


def wide_console() -> Console:
    """A console at least 132 columns wide (pipes and logs default to 80, which wraps the tables)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal and console.width >= 132 else Console(width=max(console.width, 132))


def _cell(v, fmt="{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def print_table(summary: DetectionSummary, console: Console | None = None) -> None:
    """The rows as a compact table (evaluation split)."""
    from rich.table import Table

    t = Table(title=f"detection on {summary.provenance['subject']['subject']} (evaluation split)")
    for col in ("detector", "n", "label", "AUC [95% CI]", "TPR@1%", "TPR@0.1%", "NFE/gen", "s/prompt", "MB"):
        t.add_column(col, justify="left" if col in ("detector", "label") else "right", no_wrap=True)
    for r in summary.rows:
        ci = "" if r.auc_ci is None else f" [{r.auc_ci[0]:.3f}, {r.auc_ci[1]:.3f}]"
        t.add_row(r.detector, str(r.n_gen), r.label, _cell(r.auc) + ci, _cell(r.tpr_at_1fpr),
                  _cell(r.tpr_at_01fpr), f"{r.nfe_per_generation:g}", f"{r.seconds_per_prompt:.4f}",
                  f"{r.peak_mem_mb:.1f}")
    (console or wide_console()).print(t)


def _cli(args) -> int:
    from diffmem.detectors.harness import LABELS, resolve_detectors, run_detection
    from diffmem.reports.html import finish_report

    resolve_detectors(args.detectors)  # a misspelt name is refused before any model loads
    if not args.labels or set(args.labels) - set(LABELS):
        raise ValueError(f"--labels {','.join(args.labels)!r}: give a comma-separated subset of {', '.join(LABELS)}")
    subject = subject_from_args(args)
    quick = QUICK if args.quick else {}
    kw = dict(n_gen=args.n_gen or quick.get("n_gen", (1, 4)), base_seed=args.seed, out=args.out, labels=args.labels,
              n_label=args.n_label or quick.get("n_label", 4), chunk_size=args.chunk,
              n_boot=quick.get("n_boot", 2000))
    if args.dry_run:
        dets = [d.name for d in resolve_detectors(args.detectors)]
        return emit(args, {"subject": subject.name, "prompts": len(subject.prompts), "steps": subject.steps,
                           **placement(subject), "detectors": dets, "workers": args.workers, "ray": args.ray, **kw})
    start_run(args.out, ("summary.json", "scores.csv", "report.html"))
    with executor_from_args(args) as executor:
        run = run_detection(subject, args.detectors, **kw, executor=executor, progress=None if not
                            progress_enabled(args) else lambda msg: print(f"scoring {msg}", file=sys.stderr,
                                                                          flush=True))

    def table():
        print_table(run.summary)
        for s in run.summary.skipped:
            print(f"skipped {s['detector']} n={s['n_gen']}: {s['reason']}")

    return emit(args, {"subject": subject.name, "prompts": len(subject.prompts), "rows": len(run.summary.rows),
                       "skipped": len(run.summary.skipped), "seconds": round(run.summary.seconds, 1),
                       **run.summary.units, "threads": args.threads, "out": str(args.out),
                       "report": str(finish_report(args.out))}, table=table)
