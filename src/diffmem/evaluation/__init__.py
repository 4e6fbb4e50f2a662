"""Evaluation: sample-quality metrics on features (FID, precision/recall, density/coverage), aggregations of
per-generation similarity scores, and the published evaluation presets, each recorded with its provenance."""
