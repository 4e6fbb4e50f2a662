"""Mitigations of memorization: inference-time remedies, permanent model edits and training-time changes.

The protocol and registry are in :mod:`diffmem.mitigations.base`; one method per file. Head pruning (Ye et al.,
2025, Alg. 1-2): ``pruning`` (score, select, remove, fine-tune, generate on a :class:`~diffmem.subject.Subject`),
``prune_table`` (the table and its variants), ``prune_backends`` (world and diffusers inputs). Import submodules
directly; nothing heavy is imported here.
"""

import diffmem.mitigations.caption_random  # noqa: F401 (registers "caption-randomisation")
import diffmem.mitigations.dedup  # noqa: F401 (registers "dedup")
import diffmem.mitigations.head_pruning_mitigation  # noqa: F401 (registers "head-pruning")
import diffmem.mitigations.magnitude_filter  # noqa: F401 (registers "magnitude-filter")
import diffmem.mitigations.memorization_monitor  # noqa: F401 (registers "early-stopping")
import diffmem.mitigations.neuron_deactivation  # noqa: F401 (registers "nemo")
