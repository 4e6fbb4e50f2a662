"""Mitigations of memorization: inference-time remedies, permanent model edits and training-time changes.

The protocol and registry are in :mod:`diffmem.mitigations.base`; one method per file. Head pruning (Ye et al.,
2025, Alg. 1-2): ``pruning`` (score, select, remove, fine-tune, generate on a :class:`~diffmem.subject.Subject`),
``prune_table`` (the table and its variants), ``prune_backends`` (world and diffusers inputs). Import submodules
directly; nothing heavy is imported here.
"""

from diffmem.mitigations import cfg_schedule, ours_overshoot  # noqa: E402,F401  (register the methods)
