"""Mitigations of memorization: inference-time remedies, permanent model edits and training-time changes.

The protocol and registry are in :mod:`diffmem.mitigations.base`; one method per file. Head pruning (Ye et al.,
2025, Alg. 1-2): ``pruning`` (score, select, remove, fine-tune, generate on a :class:`~diffmem.subject.Subject`),
``prune_table`` (the table and its variants), ``prune_backends`` (world and diffusers inputs). Import submodules
directly. Importing the package registers every method in
:data:`diffmem.mitigations.base.MITIGATIONS`.
"""

from diffmem.mitigations import (  # noqa: F401, E402 (each import registers its methods)
    attention_edit,
    caption_noise,
    caption_random,
    cfg_schedule,
    dedup,
    embedding_opt,
    head_pruning_mitigation,
    init_noise,
    kim_embedding,
    magnitude_filter,
    memorization_monitor,
    neuron_deactivation,
    ours_overshoot,
    sail,
)
