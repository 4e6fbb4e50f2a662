"""The analyses of Kim et al. (2025), "How Diffusion Models Memorize": each consumes recorded trajectories (or
the denoiser on forward-noised training images) and returns plain arrays or a result dataclass."""
