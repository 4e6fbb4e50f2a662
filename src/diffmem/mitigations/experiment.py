"""Table 1 of Ye et al. (2025) on a world: original vs Algorithm-1 pruning vs random pruning, several runs.

Run s uses seed s for the scoring batches (or the random pick), the fine-tuning draws and the sampling noise
(spec §10). Every (method, run) row is written to ``OUT/runs/{method}-{s}.json`` as soon as it is done and
skipped when present, so a killed run resumes. ``OUT/summary.json`` maps each method to its ``mem_ratio_mean`` …
``recall_std`` plus a ``settings`` entry. The Algorithm-1 model of run 0 (zero-gated heads, EMA weights) is saved
to ``OUT/pruned/``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from diffmem.io import read_json, write_arrays, write_json
from diffmem.mitigations.head_pruning import prune_count
from diffmem.mitigations.prune_eval import generate, run_metrics, summarise
from diffmem.mitigations.pruning import finetune, prune
from diffmem.mitigations.time_law import TIME_LAWS

__all__ = ["TABLE_METHODS", "run_table"]

TABLE_METHODS = ("original", "importance", "random")


def _training_set(world):
    from diffmem.worlds.world import _training_set  # TODO(lead): make public in worlds/world.py

    return _training_set(world.data, world.tokenizer, world.null_label)


def _one_run(world, method: str, seed: int, out: Path, *, ratio: float, law: str, num_batches: int,
             finetune_steps: int, n_samples: int, sample_steps: int, features: Callable[[Tensor], Tensor]) -> dict:
    row: dict = {"method": method, "seed": seed}
    if method != "original":
        ts, cfg = _training_set(world), world.config.train
        result = prune(world.net, ts, cfg, method=method, ratio=ratio, law=law, num_batches=num_batches, seed=seed)
        ema = finetune(world.net, ts, cfg, finetune_steps, out / "state" / f"{method}-{seed}.pt", seed=seed)
        ema.copy_to(world.net)  # sample the EMA weights, as the world itself does
        row["removed"] = result.removed
        if method == "importance" and seed == 0:
            write_arrays(out / "pruned" / "weights.safetensors", dict(world.net.state_dict()))
            result.save(out / "pruned")
    x0 = generate(world, n_samples, seed=seed * n_samples, steps=sample_steps)
    real = world.data.images
    row.update(run_metrics(x0, world.train_images(), real, features))
    return row


def run_table(world, out: str | Path, *, ratio: float = 0.2, runs: int = 5, law: str = "beta",
              num_batches: int = 100, finetune_steps: int = 1000, n_samples: int = 1000, sample_steps: int = 50,
              methods: tuple[str, ...] = TABLE_METHODS, features: Callable[[Tensor], Tensor] | None = None) -> dict:
    """Fill the table for ``world`` (whose live net is restored after every pruned run); returns the summary.

    ``features`` maps images to FID / precision-recall features (default: the project's digits classifier).
    """
    unknown = set(methods) - set(TABLE_METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; expected some of {TABLE_METHODS}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if law not in TIME_LAWS:
        raise ValueError(f"unknown time law {law!r}; expected one of {TIME_LAWS}")
    prune_count(1, ratio)  # rejects a bad η before any sampling
    if features is None:
        from diffmem.similarity.digits_classifier import load_digits_classifier

        features = load_digits_classifier().features
    out = Path(out)
    original = {k: v.clone() for k, v in world.net.state_dict().items()}
    rows: dict[str, list] = {m: [] for m in methods}
    try:
        for seed in range(runs):
            for method in methods:
                path = out / "runs" / f"{method}-{seed}.json"
                if not path.exists():
                    row = _one_run(world, method, seed, out, ratio=ratio, law=law, num_batches=num_batches,
                                   finetune_steps=finetune_steps, n_samples=n_samples, sample_steps=sample_steps,
                                   features=features)
                    write_json(path, row)
                    world.net.load_state_dict(original)  # gates back to 1, weights back to the trained model
                rows[method].append(read_json(path))
    finally:
        with torch.no_grad():
            world.net.load_state_dict(original)
    summary = {**summarise(rows), "settings": {
        "world": world.name, "ratio": ratio, "law": law, "runs": runs, "num_batches": num_batches,
        "finetune_steps": finetune_steps, "n_samples": n_samples, "sample_steps": sample_steps}}
    write_json(out / "summary.json", summary)
    return summary
