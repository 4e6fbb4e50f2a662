"""Constants that the parsers show in ``--help`` (choices, defaults of presets), copied here from the torch-heavy
modules that own them so that ``diffmem COMMAND --help`` imports no torch. ``tests/test_cli_help.py`` keeps each
copy equal to its source.
"""

from __future__ import annotations

__all__ = ["DEMO_SECTIONS", "PRUNE_FULL", "PRUNE_QUICK", "PRUNE_VARIANTS"]

# diffmem.runners.demo.SECTIONS
DEMO_SECTIONS = ("world", "kim", "theory")

# the fields of diffmem.mitigations.prune_table.FULL and QUICK (TableSettings) that the flags of ``prune`` set
PRUNE_FULL = {"ratio": 0.2, "runs": 5, "law": "beta", "num_batches": 100, "finetune_steps": 1000, "n_samples": 1000,
              "sample_steps": 50, "score_samples": 128}
PRUNE_QUICK = {**PRUNE_FULL, "runs": 2, "n_samples": 200, "finetune_steps": 100, "num_batches": 10, "sample_steps": 20,
               "score_samples": 32}

# the keys of diffmem.mitigations.prune_table.VARIANTS, in order
PRUNE_VARIANTS = ("original", "importance", "random", "importance-uniform-t", "importance-wd0.3", "importance-eta0.1",
                  "importance-eta0.3", "importance-eta0.5", "ours-copy-ablation", "ours-copy-ablation-eta0.3",
                  "ours-copy-ablation-eta0.5", "finetune-only", "finetune-only-ft300", "importance-ft300",
                  "random-ft300", "ours-copy-ablation-ft300", "ours-copy-ablation-eta0.3-ft300")
