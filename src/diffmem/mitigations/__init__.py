"""Mitigations of memorization that change the model: one-shot attention-head pruning (Ye et al., 2025, Alg. 1-2).

Import submodules directly (``diffmem.mitigations.pruning``: score, select, remove, fine-tune, generate on a
:class:`~diffmem.subject.Subject`; ``prune_table``: the table and its variants; ``prune_backends``: world and
diffusers inputs); nothing heavy is imported here.
"""
