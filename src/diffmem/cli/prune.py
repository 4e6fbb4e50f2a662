"""``diffmem prune --world digits-dit --ratio 0.2 --out DIR``: Table 1 of Ye et al. (2025) on a world — the
original model, Algorithm-1 head pruning and random pruning at the same ratio, each fine-tuned identically, over
several runs — and the variants: importance with uniform-t scoring, with weight decay 0.3 while fine-tuning, at
η = 0.1 / 0.3 / 0.5, ours (heads chosen by single-head ablation of copies, η = 0.2 / 0.3 / 0.5), a
fine-tune-only control (η = 0) and the same choices with a shorter fine-tuning (M = 300). Writes DIR/summary.json,
DIR/settings.json (what the rows were made with), DIR/runs/*.json (one row each; resumable, and two processes
may fill different --methods of one DIR) and the pruned models in DIR/pruned/ (Algorithm 1) and
DIR/pruned-ours-copy-ablation/. A row's fine-tuning checkpoint (DIR/state/finetune-*.safetensors) is deleted once
the row is written.

Trains the world first if it is not in the cache (minutes on CPU). ``--workers N`` / ``--ray ADDRESS`` run the rows
on Ray workers that each load the model once (the same table); on several machines DIR must be a shared folder.

``diffmem prune --model LOCAL_DIR --data DATA.npz --ratio 0.2 --out DIR``: the same table for a diffusers DiT or
PixArt pipeline saved in LOCAL_DIR (loaded offline). DATA.npz holds ``images`` [N, C, H, W] or [N, H, W, C] in
[0, 1] (or uint8) at the model's pixel size and ``labels`` [N] (DiT: class ids, needed unless the model has one
class) or ``captions`` [N] (PixArt). Metrics are computed on decoded pixels (FID and precision/recall against
DATA's images); the Algorithm-1 model of run 0 is saved to DIR/pruned/ (diffmem.mitigations.diffusers_heads.
load_pruned).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from diffmem.cli._names import PRUNE_FULL, PRUNE_QUICK, PRUNE_VARIANTS
from diffmem.cli.common import add_command, add_common, add_scale, emit, progress_enabled, resolve_device

if TYPE_CHECKING:
    from diffmem.mitigations.prune_table import TableSettings

__all__ = ["add_parser"]

FLAGS = {"runs": ("runs", "runs (seeds 0..R-1)"), "samples": ("n_samples", "generated samples per run"),
         "finetune-steps": ("finetune_steps", "fine-tuning steps M"), "batches": ("num_batches", "scoring batches"),
         "score-samples": ("score_samples", "scoring samples of ours")}  # flag -> TableSettings field


def add_parser(sub) -> None:
    p = add_command(sub, "prune", __doc__)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--world", default="digits-dit", help="world name or checkpoint dir (default: %(default)s)")
    source.add_argument("--model", help="local diffusers DiTPipeline or PixArt pipeline directory (instead of --world)")
    p.add_argument("--data", help="with --model: .npz with images in [0, 1] and labels or captions")
    add_common(p, model=("device", "batch-size"), seed=None,
               steps=f"DDIM; default {PRUNE_FULL['sample_steps']}, quick: {PRUNE_QUICK['sample_steps']}")
    p.add_argument("--features", help="with --model: local TorchScript feature model for FID and precision/recall "
                   "(default: decoded pixels pooled to <= 32x32)")
    p.add_argument("--preprocess", help="with --features: preprocessing preset (default: inception299)")
    p.add_argument("--ratio", type=float, default=0.2, help="fraction η of heads removed (default: %(default)s)")
    p.add_argument("--law", choices=("beta", "uniform"), default="beta",
                   help="scoring time law: Beta(0.8, 2) or uniform (default: %(default)s)")
    for flag, (key, help_) in FLAGS.items():
        p.add_argument(f"--{flag}", type=int, dest=key, metavar="N",
                       help=f"{help_} (default {PRUNE_FULL[key]}; quick: {PRUNE_QUICK[key]})")
    p.add_argument("--methods", help="comma-separated rows of the table, or 'all' or 'table' (original,importance,"
                   "random); default: all with --world, table with --model; known: " + ", ".join(PRUNE_VARIANTS))
    p.add_argument("--summarize-only", action="store_true", help="compute nothing: summarize the rows already in "
                   "--out (each method over the runs it has)")
    p.add_argument("--quick", action="store_true", help="smaller settings: " + ", ".join(
        f"{flag}={PRUNE_QUICK[key]}" for flag, (key, _) in {**FLAGS, "steps": ("sample_steps", "")}.items()))
    add_scale(p)
    p.set_defaults(run=_cli, out_shared=True)  # run_table merges concurrent runs' rows under a file lock


def _methods(text: str | None, model: bool) -> tuple[str, ...]:
    from diffmem.mitigations.prune_table import TABLE_METHODS, VARIANTS

    text = text or ("table" if model else "all")
    if text in ("all", "table"):
        return tuple(VARIANTS) if text == "all" else TABLE_METHODS
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown or not methods:
        raise ValueError(f"unknown --methods {unknown or text!r}; known: {', '.join(VARIANTS)}")
    return methods


def _check_flags(args) -> None:
    """Flags of another mode are refused, not ignored; checked before any model loads."""
    from diffmem.adapters.subject_data import read_npz
    from diffmem.similarity.preprocess import get_preprocess

    if args.preprocess is not None:
        if not args.features:
            raise ValueError(f"--preprocess {args.preprocess!r} applies to --features (a TorchScript feature model); "
                             "give --features FILE or drop --preprocess")
        get_preprocess(args.preprocess)  # an unknown preset: one line naming the known ones
    if not args.model and (any(v is not None for v in (args.data, args.batch_size, args.features))
                           or args.device not in ("auto", "cpu")):
        raise ValueError("--data, --batch-size, --device and --features go with --model, not with --world (an "
                         "embedded world runs on the CPU)")
    if args.model and not args.data:
        raise ValueError("--model needs --data DATA.npz (images in [0, 1] and labels or captions)")
    if args.model:
        read_npz(args.data)  # a bad data file is refused before the pipeline loads


def table_inputs(world: str | None, model: str | None, data: str | None, device: str, batch_size: int | None,
                 features: str | None, preprocess: str | None, quick: bool, progress: bool = False):
    """The table's subject, evaluation and recipe (:class:`~diffmem.mitigations.prune_backends.TableInputs`) of a
    world, or of a diffusers model with its data."""
    from diffmem.adapters.subject_data import load_data_adapter
    from diffmem.mitigations.prune_backends import diffusers_inputs, world_inputs
    from diffmem.similarity.features import TorchScriptExtractor
    from diffmem.worlds.world import load_world

    if model:
        adapter = load_data_adapter(model)
        device = resolve_device(device)
        adapter.pipeline.to(device)
        extractor = features and TorchScriptExtractor(features, preprocess=preprocess or "inception299", device=device)
        return diffusers_inputs(adapter, data, batch_size=batch_size or (16 if quick else 128),
                                features=extractor or None)
    return world_inputs(load_world(world, progress=progress))


def table_state(*recipe) -> tuple:
    """What a Ray worker builds once: ``(subject, evaluation, recipe)`` of :func:`table_inputs` over ``recipe``."""
    inputs = table_inputs(*recipe)
    return inputs.subject, inputs.evaluation, inputs.recipe


def _recipe(args, inputs) -> tuple:
    """:func:`table_inputs`' arguments for the workers (which need not share the driver's working directory): a
    world as the checkpoint folder the driver loaded, every path absolute."""
    world = None if args.model else inputs.subject.info.get("checkpoint", args.world)
    model, data, features = (p and str(Path(p).resolve()) for p in (args.model, args.data, args.features))
    world = world and (str(Path(world).resolve()) if Path(world).exists() else world)
    return (world, model, data, args.device, args.batch_size, features, args.preprocess, args.quick)


def _cli(args) -> int:
    from diffmem.executor import make_executor
    from diffmem.mitigations.prune_results import format_table
    from diffmem.mitigations.prune_table import FULL, QUICK, run_table
    from diffmem.progress import progress_bar
    from diffmem.reports.html import finish_report

    settings = replace(QUICK if args.quick else FULL, ratio=args.ratio, law=args.law,
                       **{k: getattr(args, k) for k, _ in FLAGS.values() if getattr(args, k) is not None},
                       **({"sample_steps": args.steps} if args.steps is not None else {}))
    methods = _methods(args.methods, bool(args.model))
    _check_flags(args)
    if args.dry_run:
        return emit(args, {"source": args.model or args.world, "out": str(args.out), "methods": list(methods),
                           **asdict(settings)})
    t0 = time.perf_counter()
    inputs = table_inputs(args.world, args.model, args.data, args.device, args.batch_size, args.features,
                          args.preprocess, args.quick, progress=progress_enabled(args))
    build = partial(table_state, *_recipe(args, inputs))
    with progress_bar(progress_enabled(args)) as bar, \
            make_executor(build, workers=args.workers, address=args.ray) as executor:
        task = bar.add_task("prune table: rows", total=settings.runs * len(methods))
        table = run_table(inputs.subject, inputs.evaluation, inputs.recipe, args.out, settings=settings,
                          methods=methods, compute=not args.summarize_only, executor=executor,
                          progress=lambda done, total, row: bar.update(task, completed=done))
    return emit(args, {"subject": inputs.subject.name, "settings": _short(settings),
                       "batch_size": inputs.recipe.batch_size, "seconds": round(time.perf_counter() - t0, 1),
                       "threads": args.threads, **({"workers": args.workers} if args.workers else {}),
                       **({"ray": args.ray} if args.ray else {}), "out": str(args.out),
                       "report": str(finish_report(args.out))}, table=lambda: print(format_table(table)))


def _short(settings: TableSettings) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
