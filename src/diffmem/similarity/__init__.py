"""Similarity and memorization metrics: pixel, structural, copy-detection, nearest-neighbour, quality.

Modules (one concept each; import from them directly, nothing heavy is imported here):
``retrieval`` exact memory-bounded k-NN and range search (torch or FAISS); ``criteria`` the 1/3 ratio rule, relative
distance, threshold labels; ``duplicates`` exact and near-duplicate groups; ``pixel`` L2, normalized L2, cosine,
tiled L2; ``ssim`` SSIM and MS-SSIM; ``preprocess`` named preprocessing presets; ``features`` the feature-extractor
protocol and TorchScript extractors; ``sscd`` copy-detection descriptors from a local file; ``digits_classifier``
the embedded feature model trained by diffmem.
"""
