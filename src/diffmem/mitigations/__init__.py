"""Mitigations of memorization: inference-time remedies, permanent model edits and training-time changes.

The protocol and registry are in :mod:`diffmem.mitigations.base`; one method per file. Head pruning (Ye et al.,
2025, Alg. 1-2): ``pruning`` (score, select, remove, fine-tune, generate on a :class:`~diffmem.subject.Subject`),
``prune_table`` (the table and its variants), ``prune_backends`` (world and diffusers inputs). Import submodules
directly; nothing heavy is imported here.
"""

from diffmem.mitigations import attention_edit  # noqa: F401,E402,I001 (registers ren-attention)
from diffmem.mitigations import caption_noise  # noqa: F401,E402 (registers somepalli-gni, somepalli-rt)
from diffmem.mitigations import embedding_opt  # noqa: F401,E402 (registers wen-embedding)
from diffmem.mitigations import init_noise  # noqa: F401,E402 (registers han-batchwise, han-per-sample)
from diffmem.mitigations import kim_embedding  # noqa: F401,E402 (registers kim-embedding)
from diffmem.mitigations import sail  # noqa: F401,E402 (registers sail)
