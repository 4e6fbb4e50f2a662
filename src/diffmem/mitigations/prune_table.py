"""Table 1 of Ye et al. (2025) on a :class:`~diffmem.subject.Subject` — original vs Algorithm-1 pruning vs random
pruning — plus variants (uniform-t scoring, weight decay while fine-tuning, the η sweep, a fine-tune-only control,
shorter fine-tuning, and our copy-ablation selection), several runs each.

Variants are data (:data:`VARIANTS`, plain dicts of :class:`Variant` fields). Run s uses seed s for the scoring
batches (or the random pick), the fine-tuning draws and the sampling noise. Every (method, run) row is written to
``OUT/runs/{method}-{s}.json`` as soon as it is done and skipped when present, so a killed run resumes (and two
processes may fill disjoint methods of one table); ``OUT/summary.json`` holds the :class:`PruneTable`. The run-0
models of Algorithm 1 and of ours are saved to ``OUT/pruned/`` and ``OUT/pruned-ours-copy-ablation/``. The
subject's model is never changed: every pruned model is an edited copy.

Each missing (method, run) row is one task of an executor (:mod:`diffmem.executor`): here, in order, or on Ray
workers that each hold the subject and the evaluation once. A row depends on its seed only, so the table is the same
either way. A row's own files (its fine-tuning checkpoint, the run-0 models) are written where it runs, into
``OUT``: workers on other machines need ``OUT`` on a shared file system; the driver writes the row itself.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from torch import Tensor

from diffmem.attention import Head, attention
from diffmem.executor import SerialExecutor
from diffmem.io import file_lock, read_json, remove_stale_tmp, write_arrays, write_json
from diffmem.mitigations.copy_ablation import copy_ablation
from diffmem.mitigations.diffusers_heads import save_pruned
from diffmem.mitigations.head_pruning import prune_count
from diffmem.mitigations.prune_results import PruneRow, PruneTable, run_metrics, summarize
from diffmem.mitigations.pruning import PruneResult, finetune, generate, select_heads, without_heads
from diffmem.mitigations.time_law import TIME_LAWS
from diffmem.subject import Subject
from diffmem.training.config import TrainConfig

__all__ = ["Variant", "VARIANTS", "TABLE_METHODS", "TableSettings", "QUICK", "FULL", "Evaluation", "run_table",
           "check_table_settings"]


@dataclass(frozen=True)
class Variant:
    """How one row of the table is made.

    Attributes:
        select: "none" (the unpruned model, not fine-tuned), "importance" (Algorithm 1), "random", or
            "copy-ablation" (ours, :mod:`diffmem.mitigations.copy_ablation`).
        law, ratio: the scoring time law and η; None takes the table's.
        weight_decay: AdamW weight decay while fine-tuning; None keeps the recipe's.
        finetune_steps: M for this row; None takes the table's. Fine-tuning on the training set re-memorizes, so
            M trades quality against the cut; rows compared with each other must share it.
        ours: True for methods of our design (labelled as such in every output).
    """

    select: str
    law: str | None = None
    ratio: float | None = None
    weight_decay: float | None = None
    finetune_steps: int | None = None
    ours: bool = False


VARIANTS: dict[str, dict] = {
    "original": {"select": "none"},
    "importance": {"select": "importance"},
    "random": {"select": "random"},
    "importance-uniform-t": {"select": "importance", "law": "uniform"},
    "importance-wd0.3": {"select": "importance", "weight_decay": 0.3},
    "importance-eta0.1": {"select": "importance", "ratio": 0.1},
    "importance-eta0.3": {"select": "importance", "ratio": 0.3},
    "importance-eta0.5": {"select": "importance", "ratio": 0.5},
    "ours-copy-ablation": {"select": "copy-ablation", "ours": True},
    "ours-copy-ablation-eta0.3": {"select": "copy-ablation", "ratio": 0.3, "ours": True},
    "ours-copy-ablation-eta0.5": {"select": "copy-ablation", "ratio": 0.5, "ours": True},
    # control: no head removed, the same fine-tuning (separates the effect of pruning from that of fine-tuning)
    "finetune-only": {"select": "random", "ratio": 0.0},
    "finetune-only-ft300": {"select": "random", "ratio": 0.0, "finetune_steps": 300},
    # the same choices with a shorter fine-tuning budget M = 300 (baselines matched)
    "importance-ft300": {"select": "importance", "finetune_steps": 300},
    "random-ft300": {"select": "random", "finetune_steps": 300},
    "ours-copy-ablation-ft300": {"select": "copy-ablation", "finetune_steps": 300, "ours": True},
    "ours-copy-ablation-eta0.3-ft300": {"select": "copy-ablation", "ratio": 0.3, "finetune_steps": 300, "ours": True},
}
TABLE_METHODS = ("original", "importance", "random")  # Ye et al.'s Table 1
_LOCATIONS = ("checkpoint", "data")  # where the model and data lie: recorded, not compared when resuming
_SAVED = {"importance": "pruned", "ours-copy-ablation": "pruned-ours-copy-ablation"}  # run-0 models kept


@dataclass(frozen=True)
class TableSettings:
    """The table's shared settings: η, runs, scoring (law, batches), fine-tuning M, sampling (samples per run,
    steps) and ours' scoring batch."""

    ratio: float = 0.2
    runs: int = 5
    law: str = "beta"
    num_batches: int = 100
    finetune_steps: int = 1000
    n_samples: int = 1000
    sample_steps: int = 50
    score_samples: int = 128

    def __post_init__(self):
        prune_count(1, self.ratio)  # rejects a bad η
        if self.law not in TIME_LAWS:
            raise ValueError(f"unknown time law {self.law!r}; expected one of {TIME_LAWS}")
        for name in ("runs", "num_batches", "n_samples", "sample_steps", "score_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps}")


FULL = TableSettings()
QUICK = TableSettings(runs=2, n_samples=200, finetune_steps=100, num_batches=10, sample_steps=20, score_samples=32)


@dataclass(frozen=True)
class Evaluation:
    """What the metrics compare generated pixels with.

    Attributes:
        train_images: [M, C, H, W] the training images in pixels (the copy test's references).
        real_images: [N, C, H, W] the reference set of FID and precision/recall.
        features: images -> features for FID and precision/recall.
        description: how (recorded in the settings: feature space, copy space).
    """

    train_images: Tensor
    real_images: Tensor
    features: Callable[[Tensor], Tensor]
    description: Mapping = field(default_factory=dict)


def _variant(method: str) -> Variant:
    if method not in VARIANTS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(VARIANTS)}")
    return Variant(**VARIANTS[method])


def _choose(subject: Subject, evaluation: Evaluation, recipe: TrainConfig, v: Variant, settings: TableSettings,
            eta: float, seed: int):
    """(heads, PruneResult or None, extra row fields) of one pruned row."""
    if v.select == "copy-ablation":
        chosen = copy_ablation(subject, evaluation.train_images, eta, n_samples=settings.score_samples, seed=seed,
                               steps=settings.sample_steps)
        return chosen.heads, chosen, {"scoring_copy_rate": chosen.baseline_copy_rate}
    result = select_heads(subject, recipe, method=v.select, ratio=eta, law=v.law or settings.law,
                          num_batches=settings.num_batches, seed=seed)
    return result.heads, result, {}


def _save(original: Subject, pruned: Subject, method: str, heads: list[Head], chosen, folder: Path,
          extra: dict) -> None:
    """The run-0 model: a diffusers model as its state dict plus what rebuilds it from the source directory
    (:func:`~diffmem.mitigations.diffusers_heads.load_pruned`), a world net as its state dict."""
    if "pipeline" in original.info:
        save_pruned(pruned.net, heads, folder, source=original.info.get("model"), pipeline=original.info["pipeline"],
                    heads_before=attention(original.net).head_counts(), extra=extra)
    else:
        write_arrays(folder / "weights.safetensors", dict(pruned.net.state_dict()))
    if isinstance(chosen, PruneResult):
        chosen.save(folder)
    else:
        write_json(folder / "removed.json", {"method": method, **extra, "removed": [[h.layer, h.index] for h in heads],
                                             "scores": chosen.scores})


def _one_run(subject: Subject, evaluation: Evaluation, recipe: TrainConfig, method: str, seed: int, out: Path,
             settings: TableSettings) -> PruneRow:
    v, model, fields = _variant(method), subject, {}
    if v.select != "none":
        eta = settings.ratio if v.ratio is None else v.ratio
        heads, chosen, fields = _choose(subject, evaluation, recipe, v, settings, eta, seed)
        cfg = recipe if v.weight_decay is None else replace(recipe, weight_decay=v.weight_decay)
        steps = settings.finetune_steps if v.finetune_steps is None else v.finetune_steps
        model = finetune(without_heads(subject, heads), cfg, steps, _state(out, method, seed), seed=seed)
        fields.update(removed=[[h.layer, h.index] for h in heads], ratio=eta, finetune_steps=steps)
        if seed == 0 and method in _SAVED:
            _save(subject, model, method, heads, chosen, out / _SAVED[method],
                  {"ratio": eta, "finetune_steps": steps, "law": v.law or settings.law})
    x0 = generate(model, settings.n_samples, seed=seed * settings.n_samples, steps=settings.sample_steps)
    metrics = run_metrics(x0, evaluation.train_images, evaluation.real_images, evaluation.features)
    return PruneRow(method, seed, metrics, v.ours, **fields)


def _run_task(method: str, seed: int, out: Path, settings: TableSettings, state: tuple) -> dict:
    """One row as a task of the executor; ``state`` is the worker's ``(subject, evaluation, recipe)``."""
    subject, evaluation, recipe = state
    return _one_run(subject, evaluation, recipe, method, seed, out, settings).to_dict()


def _state(out: Path, method: str, seed: int) -> Path:
    """The resumable fine-tuning checkpoint of one row (safetensors), deleted once the row is written."""
    return out / "state" / f"finetune-{method}-{seed}.safetensors"


def check_table_settings(out: Path, settings: dict) -> None:
    """Rows of one folder must come from one setting: resuming with other settings is refused, by name."""
    path = out / "settings.json"
    if path.exists():
        old = read_json(path)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds a table made with other settings (saved, requested): {diff}; "
                             "use another --out")
    else:
        write_json(path, settings)


def _rows(out: Path, method: str, runs: int) -> list[PruneRow]:
    paths = [out / "runs" / f"{method}-{s}.json" for s in range(runs)]
    return [PruneRow.from_dict(read_json(p)) for p in paths if p.exists()]


def run_table(subject: Subject, evaluation: Evaluation, recipe: TrainConfig, out: str | Path, *,
              settings: TableSettings = FULL, methods: Sequence[str] = TABLE_METHODS,
              compute: bool = True, progress: Callable[[int, int, str], None] | None = None,
              executor=None) -> PruneTable:
    """Fill the table for ``subject`` (its prompts are what samples cycle over; its training set is scored and
    fine-tuned on with ``recipe``) and return it (also written to ``out/summary.json``).

    ``methods`` are keys of :data:`VARIANTS`. ``compute=False`` only summarizes the rows already in ``out`` (each
    method over the runs it has; methods without any row are left out), e.g. to read a table still being filled.
    ``progress(done, total, row)`` is called after each row (found, then done). ``executor``: where the missing
    rows run (:mod:`diffmem.executor`; default: here, run by run); Ray workers hold ``(subject, evaluation,
    recipe)`` built once each and write into ``out``.
    """
    for m in methods:
        _variant(m)  # an unknown method is refused before anything runs
    out = Path(out)
    info = {k: v for k, v in subject.info.items() if isinstance(v, (str, int, float))}
    identity = {**{k: v for k, v in info.items() if k not in _LOCATIONS},
                **{k: v for k, v in dataclasses.asdict(settings).items() if k != "runs"},
                "recipe": {k: v for k, v in recipe.to_dict().items() if k not in ("steps", "seed")},  # set per row
                **dict(evaluation.description)}
    identity = json.loads(json.dumps(identity))  # as JSON reads it back, so a resumed run compares equal
    with file_lock(out / ".table.lock"):  # two processes filling one folder agree on its settings and methods
        remove_stale_tmp(out)
        check_table_settings(out, identity)
        if compute:
            _register_methods(out, methods)
    if compute:
        _fill(subject, evaluation, recipe, out, settings, methods, progress, executor or SerialExecutor())
    if (out / "state").is_dir() and not any((out / "state").iterdir()):
        (out / "state").rmdir()
    with file_lock(out / ".table.lock"):  # the summary covers every method any process asked of this folder
        union = _register_methods(out, methods, save=compute)
        table = _table(subject, out, union, settings, info, identity)
        write_json(out / "summary.json", table.to_dict())
    return table if compute else _table(subject, out, methods, settings, info, identity)


def _fill(subject: Subject, evaluation: Evaluation, recipe: TrainConfig, out: Path, settings: TableSettings,
          methods: Sequence[str], progress, executor) -> None:
    """Every missing (method, run) row, run by run, each written by the driver as it arrives."""
    rows, todo = [(m, seed) for seed in range(settings.runs) for m in methods], []
    for m, seed in rows:
        if (out / "runs" / f"{m}-{seed}.json").exists():
            _state(out, m, seed).unlink(missing_ok=True)  # a kill between the row and this cleanup left it
        else:
            todo.append((m, seed))
    done = len(rows) - len(todo)
    if progress and done:
        progress(done, len(rows), "found")
    tasks = [partial(_run_task, m, seed, out.resolve(), settings) for m, seed in todo]  # workers' cwd may differ
    for j, row in executor.imap(tasks, (subject, evaluation, recipe)):
        method, seed = todo[j]
        write_json(out / "runs" / f"{method}-{seed}.json", row)
        _state(out, method, seed).unlink(missing_ok=True)  # the fine-tuning checkpoint only serves a resume
        done += 1
        if progress:
            progress(done, len(rows), f"{method}-{seed}")


def _table(subject: Subject, out: Path, methods: Sequence[str], settings: TableSettings, info: dict,
           identity: dict) -> PruneTable:
    variants = {m: _variant(m) for m in methods}
    rows = {m: _rows(out, m, settings.runs) for m in methods}
    if not any(rows.values()):
        raise ValueError(f"no finished rows of {list(methods)} in {out / 'runs'}")
    summaries = summarize(rows, baseline_rows=_rows(out, "original", settings.runs))
    return PruneTable(summaries, {"subject": subject.name, **info, **identity, "runs": settings.runs,
                                  "variants": {m: dataclasses.asdict(variants[m]) for m in summaries},
                                  "provenance": json.loads(json.dumps(subject.describe(), default=str))})


def _register_methods(out: Path, methods: Sequence[str], save: bool = True) -> list[str]:
    """The union of ``methods`` and those earlier or concurrent runs asked of ``out`` (``methods.json``, updated
    when ``save``); call under the folder's lock."""
    path = out / "methods.json"
    known = read_json(path) if path.exists() else []
    union = list(dict.fromkeys([*known, *methods]))
    if save and union != known:
        write_json(path, union)
    return union

