"""Mitigations of memorization that change the model: one-shot attention-head pruning (Ye et al., 2025, Alg. 1-2).

Import submodules directly (``diffmem.mitigations.head_pruning``, ``diffmem.mitigations.time_law``); nothing
heavy is imported here.
"""
