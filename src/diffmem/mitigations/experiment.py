"""Table 1 of Ye et al. (2025) on a world — original vs Algorithm-1 pruning vs random pruning — plus the
variants of issue 8 (uniform-t scoring, weight decay while fine-tuning, the η sweep, and our copy-ablation
selection), several runs each.

Run s uses seed s for the scoring batches (or the random pick), the fine-tuning draws and the sampling noise
(spec §10). Every (method, run) row is written to ``OUT/runs/{method}-{s}.json`` as soon as it is done and
skipped when present, so a killed run resumes (and two processes may fill disjoint methods of one table).
``OUT/summary.json`` maps each method to its ``mem_ratio_mean`` … ``recall_std`` plus a ``settings`` entry. The
run-0 models of Algorithm 1 and of ours (zero-gated heads, EMA weights) are saved to ``OUT/pruned/`` and
``OUT/pruned-ours-copy-ablation/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from diffmem.io import read_json, write_arrays, write_json
from diffmem.mitigations.copy_ablation import copy_ablation
from diffmem.mitigations.head_pruning import prune_count
from diffmem.mitigations.prune_eval import generate, paired_deltas, run_metrics, summarise
from diffmem.mitigations.pruning import apply_removal, finetune, prune
from diffmem.mitigations.time_law import TIME_LAWS
from diffmem.worlds.world import training_set

__all__ = ["Variant", "VARIANTS", "TABLE_METHODS", "run_table", "check_table_settings"]


@dataclass(frozen=True)
class Variant:
    """How one row of the table is made.

    Attributes:
        select: "none" (the unpruned model, not fine-tuned), "importance" (Algorithm 1), "random", or
            "copy-ablation" (ours, :mod:`diffmem.mitigations.copy_ablation`).
        law, ratio: the scoring time law and η; None takes the table's.
        weight_decay: AdamW weight decay while fine-tuning; None keeps the base recipe's (0).
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


VARIANTS: dict[str, Variant] = {
    "original": Variant("none"),
    "importance": Variant("importance"),
    "random": Variant("random"),
    "importance-uniform-t": Variant("importance", law="uniform"),
    "importance-wd0.3": Variant("importance", weight_decay=0.3),
    **{f"importance-eta{eta:g}": Variant("importance", ratio=eta) for eta in (0.1, 0.3, 0.5)},
    "ours-copy-ablation": Variant("copy-ablation", ours=True),
    **{f"ours-copy-ablation-eta{eta:g}": Variant("copy-ablation", ratio=eta, ours=True) for eta in (0.3, 0.5)},
    # control: no head removed, the same fine-tuning (separates the effect of pruning from that of fine-tuning)
    "finetune-only": Variant("random", ratio=0.0),
    "finetune-only-ft300": Variant("random", ratio=0.0, finetune_steps=300),
    # the same choices with a shorter fine-tuning budget M = 300 (baselines matched)
    "importance-ft300": Variant("importance", finetune_steps=300),
    "random-ft300": Variant("random", finetune_steps=300),
    "ours-copy-ablation-ft300": Variant("copy-ablation", finetune_steps=300, ours=True),
    "ours-copy-ablation-eta0.3-ft300": Variant("copy-ablation", ratio=0.3, finetune_steps=300, ours=True),
}
TABLE_METHODS = ("original", "importance", "random")  # Ye et al.'s Table 1


def _one_run(world, method: str, seed: int, out: Path, *, ratio: float, law: str, num_batches: int,
             finetune_steps: int, n_samples: int, sample_steps: int, score_samples: int,
             features: Callable[[Tensor], Tensor]) -> dict:
    v = VARIANTS[method]
    row: dict = {"method": method, "seed": seed, "ours": v.ours}
    if v.select != "none":
        ts, cfg = training_set(world), world.config.train
        eta = ratio if v.ratio is None else v.ratio
        if v.select == "copy-ablation":
            chosen = copy_ablation(world, eta, n=score_samples, seed=seed, steps=sample_steps)
            apply_removal(world.net, chosen.heads)
            row["removed"] = [[h.layer, h.index] for h in chosen.heads]
            row["scoring_copy_rate"] = chosen.baseline_copy_rate
        else:
            result = prune(world.net, ts, cfg, method=v.select, ratio=eta, law=v.law or law,
                           num_batches=num_batches, seed=seed)
            row["removed"] = result.removed
        if v.weight_decay is not None:
            cfg = replace(cfg, weight_decay=v.weight_decay)
        steps = finetune_steps if v.finetune_steps is None else v.finetune_steps
        ema = finetune(world.net, ts, cfg, steps, out / "state" / f"{method}-{seed}.pt", seed=seed)
        ema.copy_to(world.net)  # sample the EMA weights, as the world itself does
        row["ratio"], row["finetune_steps"] = eta, steps
        if seed == 0 and method in ("importance", "ours-copy-ablation"):
            folder = out / ("pruned" if method == "importance" else f"pruned-{method}")
            write_arrays(folder / "weights.safetensors", dict(world.net.state_dict()))
            if v.select == "importance":
                result.save(folder)
            else:
                write_json(folder / "removed.json", {"method": method, "ratio": eta, "removed": row["removed"],
                                                     "scores": chosen.scores})
    x0 = generate(world, n_samples, seed=seed * n_samples, steps=sample_steps)
    row.update(run_metrics(x0, world.train_images(), world.data.images, features))
    return row


def check_table_settings(out: Path, settings: dict) -> None:
    """Rows of one folder must come from one setting: resuming with other settings is refused, by name."""
    path = out / "table.json"
    if path.exists():
        old = read_json(path)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds a table made with other settings (saved, requested): {diff}; "
                             "use another --out")
    else:
        write_json(path, settings)


def run_table(world, out: str | Path, *, ratio: float = 0.2, runs: int = 5, law: str = "beta",
              num_batches: int = 100, finetune_steps: int = 1000, n_samples: int = 1000, sample_steps: int = 50,
              score_samples: int = 128, methods: tuple[str, ...] = TABLE_METHODS,
              features: Callable[[Tensor], Tensor] | None = None, compute: bool = True) -> dict:
    """Fill the table for ``world`` (whose live net is restored after every pruned run); returns the summary.

    ``methods`` are keys of :data:`VARIANTS`; ``score_samples`` is the scoring batch of ours;
    ``features`` maps images to FID / precision-recall features (default: the project's digits classifier).
    ``compute=False`` only summarises the rows already in ``out`` (each method over the runs it has; methods
    without any row are left out), e.g. to read a table that is still being filled.
    """
    unknown = set(methods) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; expected some of {sorted(VARIANTS)}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if law not in TIME_LAWS:
        raise ValueError(f"unknown time law {law!r}; expected one of {TIME_LAWS}")
    prune_count(1, ratio)  # rejects a bad η before any sampling
    if features is None:
        from diffmem.similarity.digits_classifier import load_digits_classifier

        features = load_digits_classifier().features
    out = Path(out)
    check_table_settings(out, {"world": world.name, "ratio": ratio, "law": law, "num_batches": num_batches,
                          "finetune_steps": finetune_steps, "n_samples": n_samples, "sample_steps": sample_steps,
                          "score_samples": score_samples})
    original = {k: v.clone() for k, v in world.net.state_dict().items()}
    rows: dict[str, list] = {m: [] for m in methods}
    try:
        for seed in range(runs):
            for method in methods:
                path = out / "runs" / f"{method}-{seed}.json"
                if not path.exists() and not compute:
                    continue
                if not path.exists():
                    row = _one_run(world, method, seed, out, ratio=ratio, law=law, num_batches=num_batches,
                                   finetune_steps=finetune_steps, n_samples=n_samples, sample_steps=sample_steps,
                                   score_samples=score_samples, features=features)
                    write_json(path, row)
                    world.net.load_state_dict(original)  # gates back to 1, weights back to the trained model
                rows[method].append(read_json(path))
    finally:
        with torch.no_grad():
            world.net.load_state_dict(original)
    rows = {m: r for m, r in rows.items() if r}
    if not rows:
        raise ValueError(f"no finished rows of {list(methods)} in {out / 'runs'}")
    summary = summarise(rows)
    baseline = {"original": [read_json(f) for s in range(runs) if (f := out / "runs" / f"original-{s}.json").exists()]}
    for method, delta in paired_deltas({**rows, **baseline}).items():
        summary[method].update(delta)  # paired by seed with the original model (the FID spread cancels)
    summary = {**summary, "settings": {
        "world": world.name, "ratio": ratio, "law": law, "runs": runs, "num_batches": num_batches,
        "finetune_steps": finetune_steps, "n_samples": n_samples, "sample_steps": sample_steps,
        "score_samples": score_samples, "variants": {m: asdict(VARIANTS[m]) for m in rows}}}
    write_json(out / "summary.json", summary)
    return summary
