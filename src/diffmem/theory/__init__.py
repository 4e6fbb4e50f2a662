"""Closed-form oracles and the theory lab of Ye et al. (2025)."""
