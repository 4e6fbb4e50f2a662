"""Similarity and memorization metrics: pixel, structural, copy-detection, nearest-neighbour, quality."""
