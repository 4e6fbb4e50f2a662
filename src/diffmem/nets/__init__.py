"""Small CPU models of the embedded worlds: attention with per-head access, a DiT backbone, a text encoder.

Everything here is plain ``torch.nn``; nothing imports diffusers (so ``import diffmem`` stays light).
"""
