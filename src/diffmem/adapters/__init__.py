"""Adapters map native models onto the denoiser contract."""
